"""The detection and segmentation models of the subject stage, loaded from user-given paths (never downloaded).

- YOLO-World (ultralytics ``.pt``): open-vocabulary boxes for text prompts. Its prompts are CLIP ViT-B/32 text
  embeddings; ultralytics would fetch that encoder itself, so we embed the labels with the same CLIP through
  ``transformers`` (``subjects.text_encoder``, a hub id in the local cache or a folder) and hand it the vectors.
- GroundingDINO (``transformers``), the paper family's detector, as an option.
- segment-anything ``SamPredictor``: one mask per box. ``sam_model_type`` vit_h / vit_l / vit_b take the official
  checkpoints (e.g. ``sam_vit_h_4b8939.pth``); ``tiny`` is our small test build (``curation.tiny_models``).
"""

from __future__ import annotations

import numpy as np

from .config import SubjectsConfig
from .subjects import Detection

# The tiny test SAM: the package's own builder with a small image encoder (the prompt encoder and mask decoder
# keep their fixed real sizes).
TINY_SAM = dict(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])


class ClipTextEncoder:
    """L2-normalised CLIP text embeddings (what CLIP's ``encode_text`` returns)."""

    def __init__(self, path: str, device: str):
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = CLIPTextModelWithProjection.from_pretrained(path).to(device).eval()

    def __call__(self, texts: list[str]):
        import torch

        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            embeds = self.model(**tokens).text_embeds
        return torch.nn.functional.normalize(embeds, dim=-1)


class YoloWorldDetector:
    def __init__(self, cfg: SubjectsConfig, device: str):
        from ultralytics import YOLOWorld

        self.cfg = cfg
        self.device = device
        self.model = YOLOWorld(cfg.detector_weights).to(device)
        self.text = ClipTextEncoder(cfg.text_encoder, device)

    def __call__(self, image_rgb: np.ndarray, labels: list[str]) -> list[Detection]:
        # What YOLOWorld.set_classes does, with our embeddings instead of its downloaded CLIP.
        world = self.model.model
        world.txt_feats = self.text(labels)[None]
        world.model[-1].nc = len(labels)
        result = self.model.predict(
            np.ascontiguousarray(image_rgb[..., ::-1]),  # ultralytics takes arrays as BGR
            imgsz=self.cfg.imgsz,
            conf=self.cfg.box_threshold,
            device=self.device,
            half=self.device.startswith("cuda"),
            verbose=False,
        )[0]
        boxes = result.boxes
        return [
            Detection(labels[int(c)], float(s), tuple(b))
            for b, s, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())
        ]


class GroundingDinoDetector:
    def __init__(self, cfg: SubjectsConfig, device: str):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.cfg = cfg
        self.device = device
        self.processor = AutoProcessor.from_pretrained(cfg.detector_weights)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(cfg.detector_weights).to(device).eval()

    def __call__(self, image_rgb: np.ndarray, labels: list[str]) -> list[Detection]:
        import torch

        text = ". ".join(labels) + "."  # GroundingDINO's prompt format: phrases ending in periods
        inputs = self.processor(images=image_rgb, text=text, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        found = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.cfg.box_threshold,
            text_threshold=self.cfg.text_threshold,
            target_sizes=[image_rgb.shape[:2]],
        )[0]
        out = []
        for box, score, phrase in zip(found["boxes"].tolist(), found["scores"].tolist(), found["text_labels"]):
            # The phrase is made of prompt tokens above text_threshold: map it back to the label it came from.
            label = next((lab for lab in labels if phrase and (phrase in lab or lab in phrase)), None)
            if label is not None:
                out.append(Detection(label, float(score), tuple(box)))
        return out


def build_sam(model_type: str, checkpoint: str | None):
    from segment_anything import sam_model_registry
    from segment_anything.build_sam import _build_sam

    if model_type == "tiny":
        return _build_sam(**TINY_SAM, checkpoint=checkpoint)
    return sam_model_registry[model_type](checkpoint=checkpoint)


class SamSegmenter:
    def __init__(self, cfg: SubjectsConfig, device: str):
        from segment_anything import SamPredictor

        self.device = device
        self.predictor = SamPredictor(build_sam(cfg.sam_model_type, cfg.sam_checkpoint).to(device).eval())

    def __call__(self, image_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """One boolean (H, W) mask per (x0, y0, x1, y1) box."""
        import torch

        with torch.inference_mode():
            self.predictor.set_image(image_rgb)
            prompts = self.predictor.transform.apply_boxes_torch(
                torch.as_tensor(boxes, device=self.device), image_rgb.shape[:2]
            )
            masks, _, _ = self.predictor.predict_torch(None, None, boxes=prompts, multimask_output=False)
        return masks[:, 0].cpu().numpy()


def load_detector(cfg: SubjectsConfig, device: str):
    return (YoloWorldDetector if cfg.detector == "yolo_world" else GroundingDinoDetector)(cfg, device)

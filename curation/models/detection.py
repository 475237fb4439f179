"""The detection and segmentation models of the subject stage, loaded from user-given paths (never downloaded).

- YOLO-World (ultralytics ``.pt``): open-vocabulary boxes for text prompts. Its prompts are CLIP ViT-B/32 text
  embeddings; ultralytics would fetch that encoder itself, so we embed the labels with the same CLIP through
  ``transformers`` (``subjects.text_encoder``, a hub id in the local cache or a folder) and hand it the vectors.
- GroundingDINO (``transformers``), the paper family's detector, as an option.
- segment-anything ``SamPredictor``: one mask per box. ``sam_model_type`` vit_h / vit_l / vit_b take the official
  checkpoints (e.g. ``sam_vit_h_4b8939.pth``); ``custom`` builds the same modules at the sizes ``sam_arch`` gives.
"""

from __future__ import annotations

import numpy as np

from curation.config import SubjectsConfig
from curation.models.runtime import load_state_dict
from curation.models.subjects import Detection


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
    """YOLO-World through ultralytics' own letterbox, ``WorldModel.predict(x, txt_feats)`` and NMS. Not
    ``YOLOWorld.predict``: its predictor deep-copies the model whenever the classes change, i.e. for every clip."""

    def __init__(self, cfg: SubjectsConfig, device: str):
        import torch
        from ultralytics import YOLOWorld
        from ultralytics.data.augment import LetterBox

        self.cfg = cfg
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = YOLOWorld(cfg.detector_weights).model.fuse().to(device, self.dtype).eval()
        self.letterbox = LetterBox((cfg.imgsz, cfg.imgsz), stride=int(self.model.stride.max()))
        self.text = ClipTextEncoder(cfg.text_encoder, device)

    def __call__(self, image_rgb: np.ndarray, labels: list[str]) -> list[Detection]:
        import torch
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import scale_boxes

        padded = self.letterbox(image=image_rgb)
        x = torch.from_numpy(padded).to(self.device).permute(2, 0, 1)[None].to(self.dtype) / 255
        self.model.model[-1].nc = len(labels)  # as WorldModel.set_classes does
        with torch.inference_mode():
            preds = self.model.predict(x, txt_feats=self.text(labels)[None].to(self.dtype))
            found = non_max_suppression(preds, self.cfg.box_threshold, nc=len(labels))[0].float()
            boxes = scale_boxes(x.shape[2:], found[:, :4], image_rgb.shape[:2])
        return [
            Detection(labels[int(c)], float(s), tuple(b))
            for b, s, c in zip(boxes.tolist(), found[:, 4].tolist(), found[:, 5].tolist())
        ]


class GroundingDinoDetector:
    """GroundingDINO (transformers). Each box goes to the label whose own prompt tokens it matches best, rather
    than to a phrase stitched from every token above a threshold (which merges neighbouring labels)."""

    def __init__(self, cfg: SubjectsConfig, device: str):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.cfg = cfg
        self.device = device
        self.processor = AutoProcessor.from_pretrained(cfg.detector_weights)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(cfg.detector_weights).to(device).eval()

    def __call__(self, image_rgb: np.ndarray, labels: list[str]) -> list[Detection]:
        import torch

        text = "".join(f"{label}. " for label in labels).strip()  # GroundingDINO's prompt: phrases ending in "."
        starts = np.cumsum([0] + [len(label) + 2 for label in labels])
        inputs = self.processor(images=image_rgb, text=text, return_offsets_mapping=True, return_tensors="pt")
        offsets = inputs.pop("offset_mapping")[0].tolist()
        with torch.inference_mode():
            outputs = self.model(**inputs.to(self.device))
        token_probs = outputs.logits[0].sigmoid()  # (queries, text positions)
        per_label = []
        for k, label in enumerate(labels):  # the tokens inside the label's characters (not its "." nor specials)
            tokens = [i for i, (a, b) in enumerate(offsets) if b > a and starts[k] <= a and b <= starts[k] + len(label)]
            per_label.append(token_probs[:, tokens].max(dim=1).values)
        scores, best = torch.stack(per_label, dim=1).max(dim=1)
        h, w = image_rgb.shape[:2]
        cx, cy, bw, bh = (outputs.pred_boxes[0] * torch.tensor([w, h, w, h], device=self.device)).unbind(-1)
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1).clamp(min=0)
        boxes = torch.minimum(boxes, torch.tensor([w, h, w, h], device=self.device))
        keep = scores >= self.cfg.box_threshold
        return [
            Detection(labels[int(k)], float(s), tuple(b))
            for b, s, k in zip(boxes[keep].tolist(), scores[keep].tolist(), best[keep].tolist())
        ]


def build_sam(cfg: SubjectsConfig):
    """The segment-anything model of ``sam_model_type`` with ``sam_checkpoint``'s weights: an official one through the
    package's registry, or ``custom``: the package's modules at ``sam_arch``'s sizes."""
    import torch
    from segment_anything import sam_model_registry

    if cfg.sam_model_type != "custom":
        return sam_model_registry[cfg.sam_model_type](checkpoint=cfg.sam_checkpoint)
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    a = cfg.sam_arch
    grid = a.image_size // a.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=a.image_size, patch_size=a.patch_size, embed_dim=a.encoder_dim, depth=a.encoder_depth,
            num_heads=a.encoder_heads, mlp_ratio=a.encoder_mlp_ratio, out_chans=a.prompt_dim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            global_attn_indexes=a.global_attn_indexes, window_size=a.window_size,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a.prompt_dim, image_embedding_size=(grid, grid), input_image_size=(a.image_size, a.image_size),
            mask_in_chans=a.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=a.prompt_dim, num_multimask_outputs=3, iou_head_depth=3,
            transformer=TwoWayTransformer(depth=a.decoder_depth, embedding_dim=a.prompt_dim, mlp_dim=a.decoder_mlp_dim,
                                          num_heads=a.decoder_heads),
            iou_head_hidden_dim=a.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    if cfg.sam_checkpoint:
        sam.load_state_dict(load_state_dict(cfg.sam_checkpoint))
    return sam


class SamSegmenter:
    def __init__(self, cfg: SubjectsConfig, device: str):
        from segment_anything import SamPredictor

        self.device = device
        self.predictor = SamPredictor(build_sam(cfg).to(device).eval())

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

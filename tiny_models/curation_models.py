"""Tiny, randomly initialised models for the model stages, saved in the formats the real loaders read.

``python -m tiny_models OUT_DIR`` writes, under ``curation/``:

- ``qwen2vl/``: a tiny Qwen2-VL with a real processor (``tiny_models.cinema_checkpoints``), for ``caption.model``
- ``clip_text/``: a tiny CLIP text encoder + tokenizer (``save_pretrained``), for ``subjects.text_encoder``
- ``clip_vision/``: a tiny CLIP vision tower with projection + its image processor (32 px), for
  ``aesthetic.clip_model``
- ``aesthetic_head.safetensors``: a head of the LAION aesthetic predictor's shape over that projection, for
  ``aesthetic.head``
- ``yolov8t-worldv2.pt``: a YOLO-World at a tiny width, saved by ultralytics, for ``subjects.detector_weights``
- ``sam_tiny.pth``: a segment-anything state dict of ``TINY_SAM``'s sizes, for ``sam_model_type=custom``
- ``grounding_dino/``: a tiny GroundingDINO + processor, for ``subjects.detector=grounding_dino``
- ``qwen2vl_fixed/``: the tiny Qwen2-VL wired to give ``FIXED_ANSWER`` to any clip, so that a demo or test on
  tiny models gets parsed captions and subject labels (random weights only ever produce unparsable text)

``tiny_overrides(paths)`` turns them into ``--set`` overrides. Real runs instead point the same fields at real
checkpoints: ``caption.model=Qwen/Qwen2-VL-7B-Instruct``, ``aesthetic.clip_model=openai/clip-vit-large-patch14
aesthetic.head=/path/sac+logos+ava1-l14-linearMSE.pth``, ``subjects.detector_weights=yolov8x-worldv2.pt``,
``subjects.text_encoder=openai/clip-vit-base-patch32``, ``subjects.sam_model_type=vit_h
subjects.sam_checkpoint=/path/sam_vit_h_4b8939.pth`` (or vit_b with ``sam_vit_b_01ec64.pth``), or
``subjects.detector=grounding_dino subjects.detector_weights=IDEA-Research/grounding-dino-base``.
"""

from __future__ import annotations

from pathlib import Path

from curation.models.runtime import go_offline

# Labels the tiny CLIP tokenizer learns its merges from; byte-level BPE still encodes any text.
_LABELS = "person man woman child face dog cat horse bird car bus truck bicycle ball tie chair table cup phone".split()


def _save_clip_text(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[bos, eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([" ".join(_LABELS)] * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos, model_max_length=77
    )
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        projection_dim=512,  # YOLO-World's prompt width
        max_position_embeddings=77, bos_token_id=tok.token_to_id(bos), eos_token_id=tok.token_to_id(eos),
        pad_token_id=tok.token_to_id(eos),
    )
    CLIPTextModelWithProjection(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _save_clip_vision(path: Path) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=24)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _save_aesthetic_head(clip_vision: Path, path: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig

    from curation.models.aesthetic import AestheticHead

    save_file(AestheticHead(CLIPVisionConfig.from_pretrained(clip_vision).projection_dim).state_dict(), path)
    return path


def _save_yolo_world(folder: Path) -> Path:
    import ultralytics
    import yaml
    from ultralytics import YOLOWorld

    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8-worldv2.yaml").read_text())
    cfg["scales"] = {"t": [0.33, 0.125, 256]}  # depth, width, max channels: ~0.7M parameters
    spec = folder / "yolov8t-worldv2.yaml"
    spec.write_text(yaml.safe_dump(cfg))
    weights = folder / "yolov8t-worldv2.pt"
    YOLOWorld(str(spec)).save(weights)
    return weights


def _save_grounding_dino(path: Path) -> Path:
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *_LABELS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    images = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    config = GroundingDinoConfig(
        backbone_config=dict(model_type="swin", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                             out_features=["stage2", "stage3", "stage4"], window_size=4, image_size=128),
        text_config=dict(model_type="bert", vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64),
        d_model=32, encoder_layers=1, decoder_layers=2,  # the box heads are tied across decoder layers: >= 2
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=20, encoder_n_points=2, decoder_n_points=2,
    )
    GroundingDinoForObjectDetection(config).eval().save_pretrained(path)
    GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


# segment-anything at toy size (256-px input, 32-d prompts and decoder): the package's vit_* builders fix a
# 1024-px input and a 256-d decoder, which alone costs seconds per box on CPU.
TINY_SAM = dict(image_size=256, patch_size=16, encoder_dim=32, encoder_depth=2, encoder_heads=2, encoder_mlp_ratio=2,
                global_attn_indexes=[1], window_size=8, prompt_dim=32, mask_in_chans=8, decoder_depth=2,
                decoder_mlp_dim=64, decoder_heads=2, iou_head_hidden_dim=32)


def _save_sam(path: Path) -> Path:
    import torch

    from curation.config import SamArch, SubjectsConfig
    from curation.models.detection import build_sam

    sam = build_sam(SubjectsConfig(sam_model_type="custom", sam_checkpoint="", sam_arch=SamArch(**TINY_SAM)))
    torch.save(sam.state_dict(), path)
    return path


# Compact JSON: the vLLM engine's structured output admits no whitespace outside strings.
FIXED_ANSWER = '{"caption":"A person walks past a parked car.","subjects":["person","car"]}'


def _save_fixed_answer_mllm(random_mllm: Path, path: Path) -> Path:
    """The tiny Qwen2-VL with weights set so its one answer is FIXED_ANSWER: the answer becomes one added token;
    every layer's output projections are zeroed, so the last hidden state is the current token's normed embedding,
    and the LM head maps the prompt's last token -> answer -> end of turn. The vision tower, the processor and
    batched generate run as in a real model."""
    import torch

    from curation.config import CaptionConfig
    from curation.models.captioning import Captioner

    captioner = Captioner.load(CaptionConfig(model=str(random_mllm)), "cpu")
    model, tokenizer = captioner.model, captioner.processor.tokenizer
    tokenizer.add_tokens([FIXED_ANSWER])
    model.resize_token_embeddings(len(tokenizer))
    text = model.model.language_model
    last = tokenizer(captioner.prompt)["input_ids"][-1]
    answer = tokenizer.convert_tokens_to_ids(FIXED_ANSWER)
    with torch.no_grad():
        for layer in text.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hidden = text.norm(model.get_input_embeddings().weight)
        model.lm_head.weight.zero_()
        model.lm_head.weight[answer] = hidden[last]
        model.lm_head.weight[tokenizer.eos_token_id] = hidden[answer]
    model.save_pretrained(path)
    captioner.processor.save_pretrained(path)
    return path


def save_tiny_models(folder: str | Path) -> dict[str, Path]:
    go_offline()
    import torch

    from tiny_models.cinema_checkpoints import save_tiny_qwen2vl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    mllm = save_tiny_qwen2vl(folder / "qwen2vl")
    paths = {
        "mllm": mllm,
        "mllm_fixed": _save_fixed_answer_mllm(mllm, folder / "qwen2vl_fixed"),
        "text_encoder": _save_clip_text(folder / "clip_text"),
        "detector": _save_yolo_world(folder),
        "sam": _save_sam(folder / "sam_tiny.pth"),
        "grounding_dino": _save_grounding_dino(folder / "grounding_dino"),
    }
    # Built after the others, which so keep the random weights they get from the seed whatever is added here.
    paths["clip_vision"] = _save_clip_vision(folder / "clip_vision")
    paths["aesthetic_head"] = _save_aesthetic_head(paths["clip_vision"], folder / "aesthetic_head.safetensors")
    return paths


def tiny_overrides(paths: dict[str, Path], fixed_answer: bool = False) -> list[str]:
    """``--set`` overrides that point a job at the tiny models, sized so CPU runs stay fast. With
    ``fixed_answer`` the captioner is the fixed-answer one and the mask clean-up is relaxed (random detector and
    SAM weights give ragged masks, often over the whole frame), so every clip gets a caption and subjects: what a demo on tiny models needs."""
    relaxed = ["subjects.morph_kernel=1", "subjects.max_components=100000", "subjects.min_area_frac=0",
               "subjects.dedupe_iou=1", "subjects.face_iou=1", "subjects.box_threshold=0",
               "subjects.max_border_cut=1", "subjects.min_reference_quality=0"]
    return [
        f"caption.model={paths['mllm_fixed' if fixed_answer else 'mllm']}",
        "caption.num_frames=4",
        "caption.num_gpus=0",
        "subjects.num_gpus=0",
        "caption.max_new_tokens=48",
        f"aesthetic.clip_model={paths['clip_vision']}",
        f"aesthetic.head={paths['aesthetic_head']}",
        "aesthetic.batch_size=8",
        "aesthetic.num_gpus=0",
        f"subjects.detector_weights={paths['detector']}",
        f"subjects.text_encoder={paths['text_encoder']}",
        "subjects.imgsz=320",
        "subjects.sam_model_type=custom",
        "subjects.sam_arch={" + ", ".join(f"{k}: {v}" for k, v in TINY_SAM.items()) + "}",
        f"subjects.sam_checkpoint={paths['sam']}",
        *(relaxed if fixed_answer else []),
    ]


"""Throughput of the model stages (caption prep, aesthetic, caption, subjects), and how much of each is model compute.

    python -m benchmarks.model_stages_bench          # CPU, tiny models, clips cut from the real sample videos
    python -m benchmarks.model_stages_bench --gpu    # one GPU: real-size model classes with random weights
    python -m benchmarks.model_stages_bench --gpu --vllm  # and the caption stage on vLLM (caption_vllm)

--gpu builds Qwen2-VL-7B (its published config) in bf16 straight on the GPU, a YOLO-World-L and SAM vit_h, and
takes openai/clip-vit-large-patch14 from the local HF cache (else its published architecture, random) in fp16 with
the LAION aesthetic head (--aesthetic-head, else a random one of its shape); feeds them 720p clips (synthetic: the
GPU machine has no sample videos) at the production input sizes (8 frames at 640x360 for the MLLM, 3 of them for
CLIP, the full keyframe for detection and SAM), and projects GPU-hours for 1.46M clips.
Random weights never stop generating, so every caption runs to max_new_tokens (an upper bound on real captions).
Prints JSON and writes out/bench/model_stages.json.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from benchmarks.results import write_result
from curation.config import load_job
from curation.models.runtime import go_offline
from curation.pipeline.row import Row
from curation.stages.aesthetic import AestheticStage
from curation.stages.caption import CaptionPrepStage, CaptionStage
from curation.stages.subjects import SubjectStage
from tiny_models.curation_models import save_tiny_models, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
TARGET_CLIPS = 1_460_000
CLIP_L14 = "openai/clip-vit-large-patch14"  # the CLIP the LAION aesthetic head sac+logos+ava1-l14 is trained on
LABELS = ["person", "car", "dog", "ball", "tree"]  # what the subject stage looks for in every clip


class ModelClock:
    """Adds up the seconds spent inside wrapped model calls (synchronising the GPU so the time is real)."""

    def __init__(self, cuda: bool):
        self.seconds, self.cuda = 0.0, cuda

    def wrap(self, obj, name: str) -> None:
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.cuda:
                import torch

                torch.cuda.synchronize()
            self.seconds += time.perf_counter() - t
            return out

        setattr(obj, name, timed)


def measure(stage, rows: list, clock: ModelClock | None, batch_size: int | None = None) -> tuple[dict, list]:
    """One warm-up batch, then every row through ``stage`` in batches of ``batch_size`` (default: the job's)."""
    batch_size = batch_size or stage.batch_size(stage.cfg)
    stage(rows[:batch_size])
    if clock:
        clock.seconds = 0.0
    out, t = [], time.perf_counter()
    for i in range(0, len(rows), batch_size):
        out += stage(rows[i : i + batch_size])
    seconds = time.perf_counter() - t
    errors = sum(r.kind == "error" for r in out)
    result = {"clips": len(rows), "batch_size": batch_size, "seconds": round(seconds, 3),
              "clips_per_s": round(len(rows) / seconds, 3),
              "model_fraction": round(clock.seconds / seconds, 3) if clock else 0.0, "error_rows": errors}
    return result, out


def clock_models(aesthetic: AestheticStage, caption: CaptionStage, subjects: SubjectStage,
                 cuda: bool) -> tuple[ModelClock, ModelClock, ModelClock]:
    aes_clock, cap_clock, sub_clock = ModelClock(cuda), ModelClock(cuda), ModelClock(cuda)
    aes_clock.wrap(aesthetic.score.clip, "forward")
    cap_clock.wrap(caption.generate.model, "generate")
    sub_clock.wrap(subjects.detect.model, "predict")
    sub_clock.wrap(subjects.detect, "text")
    sub_clock.wrap(subjects.segment.predictor, "set_torch_image")
    sub_clock.wrap(subjects.segment.predictor, "predict_torch")
    return aes_clock, cap_clock, sub_clock


def labelled(rows: list[dict]) -> list[dict]:
    """Random captioners name no subjects: the subject stage gets a fixed list, as if the caption had."""
    return [r.with_meta(subject_labels=LABELS) for r in rows]


# -- CPU --------------------------------------------------------------------------------------------------------
def real_clips(cfg) -> list[dict]:
    from curation.run.executor import Chain
    from curation.stages import enabled_cpu_stages

    with Chain(cfg, enabled_cpu_stages(cfg)) as chain:
        rows = list(chain(Row("source", str(p), {}) for p in sorted(VIDEOS.glob("*.mp4"))))
    return [r for r in rows if r.kind == "clip"]


def cpu_bench() -> dict:
    folder = Path(tempfile.mkdtemp(prefix="tiny-models-"))
    paths = save_tiny_models(folder)
    cfg = load_job(None, tiny_overrides(paths) + ["caption.max_new_tokens=128", "caption.retries=0",
                   "subjects.box_threshold=0", "subjects.max_boxes_per_label=2"], input="-", output="-")
    clips = real_clips(cfg)
    aesthetic, caption, subjects = AestheticStage(cfg), CaptionStage(cfg), SubjectStage(cfg)
    for stage in (aesthetic, caption, subjects):
        stage.setup()
    aes_clock, cap_clock, sub_clock = clock_models(aesthetic, caption, subjects, cuda=False)
    stages = {}
    stages["caption_prep"], prepped = measure(CaptionPrepStage(cfg), clips, None)
    stages["aesthetic"], _ = measure(aesthetic, prepped, aes_clock)
    stages["caption"], _ = measure(caption, prepped, cap_clock)
    stages["subjects"], _ = measure(subjects, labelled(prepped), sub_clock)
    sizes = sorted({f"{c.meta['width']}x{c.meta['height']}" for c in clips})
    return {"mode": "cpu, tiny models", "clip_sizes": sizes, "stages": stages,
            "subjects_track_frames": cfg.subjects.track_frames}


# -- GPU --------------------------------------------------------------------------------------------------------
def synthetic_clips(n: int, distinct=4, width=1280, height=720, frames=120, fps=24) -> list[dict]:
    """``n`` 5-s 720p H.264 clips of moving shapes (the GPU machine has no sample videos); ``distinct`` different
    videos, repeated under different clip ids."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx % 256, yy % 256, ((xx - yy) // 3) % 256], -1).astype(np.uint8)
    videos = []
    for i in range(distinct):
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for t in range(frames):
                img = np.roll(base, 4 * t + 97 * i, axis=1)
                x = 100 + 8 * t
                img[300:500, x : x + 160] = (220, 40, 40)  # a moving block
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        videos.append(buf.getvalue())
    meta = {"num_frames": frames, "width": width, "height": height, "fps": fps}
    return [Row("clip", "synthetic", {**meta, "clip_id": f"synthetic_{k:04d}"}, mp4=videos[k % distinct])
            for k in range(n)]


def qwen2vl_7b(tokenizer):
    """Qwen2-VL-7B-Instruct's published architecture, with the (tiny) tokenizer's special-token ids."""
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def save_full_size_detector(folder: Path, tokenizer_from: Path) -> tuple[Path, Path]:
    """A random YOLO-World-L .pt and a random CLIP ViT-B/32 text tower (with the tiny tokenizer)."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection
    from ultralytics import YOLOWorld

    weights = folder / "yolov8l-worldv2.pt"
    YOLOWorld("yolov8l-worldv2.yaml").save(weights)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = CLIPTextConfig(vocab_size=49408, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)  # the defaults are ViT-B/32's text tower
    text = folder / "clip_vit_b32_text"
    CLIPTextModelWithProjection(config).save_pretrained(text)
    tokenizer.save_pretrained(text)
    return weights, text


def clip_l14(folder: Path) -> str:
    """openai/clip-vit-large-patch14 from the local HF cache, else a random vision tower of its published
    architecture, with CLIP's 224-px preprocessing (the image processor's defaults)."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    if isinstance(try_to_load_from_cache(CLIP_L14, "config.json"), str):
        return CLIP_L14
    path = folder / "clip_vit_l14_vision"
    config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=224, patch_size=14, projection_dim=768)
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    CLIPImageProcessor().save_pretrained(path)
    return str(path)


def random_l14_head(folder: Path) -> str:
    """A head of the LAION predictor's shape over ViT-L/14's 768-d embeddings, random: the same compute."""
    from safetensors.torch import save_file

    from curation.models.aesthetic import AestheticHead

    path = folder / "aesthetic_head_l14_random.safetensors"
    save_file(AestheticHead(768).state_dict(), path)
    return str(path)


class GpuBusy:
    """The GPU's busy share while the block runs: nvidia-smi's utilization.gpu sampled every 0.2 s (device-wide,
    so it counts a vLLM server process as well as this one)."""

    def __enter__(self):
        import subprocess
        import threading

        self.samples, self.stop = [], threading.Event()

        def poll():
            while not self.stop.wait(0.2):
                try:
                    out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-i", "0"], capture_output=True, text=True)
                except OSError:  # no nvidia-smi: no share to give
                    return
                if out.returncode == 0 and out.stdout.strip().isdigit():
                    self.samples.append(int(out.stdout.strip()))

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def share(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def vllm_caption(cfg, path: Path, prepped: list, max_new_tokens: int) -> dict:
    """The same random Qwen2-VL-7B weights (saved at ``path``) served by vLLM (caption.engine vllm, .venv-vllm with
    GPU vLLM), every clip in flight, the answer fixed at max_new_tokens (free text: a schema would end random
    answers early)."""
    import copy
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()  # the transformers engine's copy leaves the GPU to vLLM
    vcfg = copy.deepcopy(cfg)
    vcfg.caption.engine, vcfg.caption.model = "vllm", str(path)
    vcfg.caption.vllm.structured_output, vcfg.caption.vllm.max_num_seqs = False, len(prepped)
    vcfg.caption.num_gpus = 1.0  # the stage then starts the engine on the GPU, in caption.dtype
    stage = CaptionStage(vcfg)
    t = time.perf_counter()
    stage.setup()
    start_s = time.perf_counter() - t
    request = stage.generate.request
    stage.generate.request = lambda f, sample: {**request(f, sample), "min_tokens": max_new_tokens, "ignore_eos": True}
    try:
        with GpuBusy() as busy:
            result, out = measure(stage, prepped, None, len(prepped))
    finally:
        stage.teardown()
    errors = [r.meta["message"] for r in out if r.kind == "error"]
    return {**result, "engine_start_s": round(start_s, 1), "gpu_busy_share": busy.share,
            **({"first_error": errors[0]} if errors else {})}


def cycled(rows: list[dict], n: int) -> list[dict]:
    return [rows[i % len(rows)] for i in range(n)]


def gpu_bench(num_clips: int, batch_sizes: list[int], aesthetic_batch_sizes: list[int], max_new_tokens: int,
              aesthetic_head: str | None, vllm: bool) -> dict:
    import torch

    from curation.models.captioning import Captioner

    assert torch.cuda.is_available(), "--gpu needs a CUDA device"
    folder = ROOT / "out" / "bench" / "gpu_models"
    folder.mkdir(parents=True, exist_ok=True)
    paths = save_tiny_models(folder / "tiny")  # processors and tokenizers; the models below are full size
    detector, text = save_full_size_detector(folder, paths["text_encoder"])
    clip_model, head = clip_l14(folder), aesthetic_head or random_l14_head(folder)
    overrides = tiny_overrides(paths) + [
        f"aesthetic.clip_model={clip_model}", f"aesthetic.head={head}", "aesthetic.num_frames=3",
        "aesthetic.num_gpus=1", "aesthetic.dtype=float16",
        f"caption.max_new_tokens={max_new_tokens}", "caption.num_frames=8",
        f"caption.max_pixels={640 * 360}", "caption.retries=0", f"subjects.detector_weights={detector}",
        f"subjects.text_encoder={text}", "subjects.imgsz=640", "subjects.sam_model_type=vit_h",
        "subjects.box_threshold=0", "subjects.max_boxes_per_label=2",
    ]
    cfg = load_job(None, overrides, input="-", output="-")
    cfg.subjects.sam_checkpoint = None  # segment-anything's builder leaves vit_h randomly initialised
    clips = synthetic_clips(num_clips)

    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(paths["mllm"])
    # The real processor keeps the frames as the CPU prep sized them (the tiny one would shrink them).
    processor.video_processor.size = {"shortest_edge": 28 * 28, "longest_edge": cfg.caption.max_pixels}
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2VLForConditionalGeneration._from_config(qwen2vl_7b(processor.tokenizer), dtype=torch.bfloat16)
    model.eval().generation_config.min_new_tokens = max_new_tokens
    caption = CaptionStage(cfg)
    caption.generate = Captioner(processor, model, cfg.caption)
    aesthetic, subjects = AestheticStage(cfg), SubjectStage(cfg)
    aesthetic.setup()
    subjects.setup()

    aes_clock, cap_clock, sub_clock = clock_models(aesthetic, caption, subjects, cuda=True)
    stages = {}
    stages["caption_prep"], prepped = measure(CaptionPrepStage(cfg), clips, None)
    for b in aesthetic_batch_sizes:  # cheap per clip: the prepped clips, repeated up to two batches
        stages[f"aesthetic_batch_{b}"], _ = measure(aesthetic, cycled(prepped, 2 * b), aes_clock, b)
    for b in batch_sizes:
        with GpuBusy() as busy:
            stages[f"caption_batch_{b}"], _ = measure(caption, prepped[: 2 * b], cap_clock, b)
        stages[f"caption_batch_{b}"]["gpu_busy_share"] = busy.share
    stages["subjects"], _ = measure(subjects, labelled(prepped), sub_clock)
    best = {name: max(stages[f"{name}_batch_{b}"]["clips_per_s"] for b in sizes)
            for name, sizes in (("aesthetic", aesthetic_batch_sizes), ("caption", batch_sizes))}
    per_gpu = {**best, "subjects": stages["subjects"]["clips_per_s"]}
    if vllm:  # last: the transformers copy of the MLLM leaves the GPU first
        path = folder / "qwen2vl_7b"
        if not (path / "config.json").exists():
            model.save_pretrained(path)
            processor.save_pretrained(path)
        caption.generate = model = None
        stages["caption_vllm"] = vllm_caption(cfg, path, prepped, max_new_tokens)
        per_gpu["caption_vllm"] = stages["caption_vllm"]["clips_per_s"]
    hours = {name: TARGET_CLIPS / rate / 3600 for name, rate in per_gpu.items()}
    return {
        "mode": "gpu, real-size models, random weights",
        "device": torch.cuda.get_device_name(),
        "aesthetic_model": f"{clip_model} (fp16), 3 frames 640x360 -> 224, "
                           f"head {aesthetic_head or 'random, LAION shape'}",
        "caption_model": "Qwen2-VL-7B (bf16), 8 frames 640x360, max_new_tokens=%d" % max_new_tokens,
        "subject_models": f"YOLO-World-L (fp16, 640) + CLIP ViT-B/32 text + SAM vit_h (fp32) + the aesthetic CLIP "
                          f"on the crops, {cfg.subjects.track_frames} 720p frames per clip",
        "subjects_track_frames": cfg.subjects.track_frames,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "stages": stages,
        "clips_per_s_per_gpu": per_gpu,
        # total: with the transformers engine's caption rate; total_vllm: with vLLM's, where measured
        "gpu_hours_for_1.46M_clips": {k: round(v) for k, v in hours.items()} | {
            f"total{suffix}": round(sum(h for k, h in hours.items() if k not in ("caption", "caption_vllm"))
                                    + hours[caption])
            for suffix, caption in (("", "caption"), ("_vllm", "caption_vllm")) if caption in hours},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="real-size models on one GPU")
    parser.add_argument("--clips", type=int, default=64, help="--gpu: synthetic clips (>= 2x the largest batch)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32], help="--gpu: caption batch sizes")
    parser.add_argument("--aesthetic-batch-sizes", type=int, nargs="+", default=[32, 128],
                        help="--gpu: aesthetic batch sizes")
    parser.add_argument("--aesthetic-head", help="--gpu: the LAION head file (default: a random one of its shape)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="--gpu: caption length in tokens")
    parser.add_argument("--vllm", action="store_true",
                        help="--gpu: also the vLLM engine (caption.engine vllm) on the same weights and clips")
    args = parser.parse_args()
    go_offline()
    result = (gpu_bench(args.clips, args.batch_sizes, args.aesthetic_batch_sizes, args.max_new_tokens,
                        args.aesthetic_head, args.vllm) if args.gpu else cpu_bench())
    write_result("model_stages", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

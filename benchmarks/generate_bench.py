"""Seconds per generated video at a preset's shapes with random weights: what `python -m cinema_model generate`
runs after loading (the conditioning, the batched-CFG Euler steps, the VAE decode, the mp4), nothing downloaded.

    python -m benchmarks.generate_bench                                    # the full preset on one GPU
    python -m benchmarks.generate_bench --preset tiny --device cpu --steps 2   # the same code path on CPU

Every part is built from its architecture (``CinemaModel(weights=False)``) straight on the device in bf16 (the
AlignerNet in fp32, as `generate` runs it); the MLLM's processor comes from the tiny checkpoints (a real Qwen2-VL
processor with a small vocabulary, with Qwen2-VL's own image-size limits), so subject images reach the MLLM as
the real number of visual tokens. Random weights cost the same compute as trained ones. After a 1-step warm-up,
two timed runs: 1 step and --steps; the seconds per step, the fixed cost (conditioning, VAE decode, mp4) and a
projection to the preset's sample_steps come from the two. Prints JSON and writes out/bench/generate.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.results import write_result
from cinema_model.config import latent_frames, preset
from cinema_model.flops import dit_forward_flops
from cinema_model.initial_weights import materialize
from cinema_model.media import write_mp4
from cinema_model.model import CinemaModel
from cinema_model.subjects import pad_subjects, subject_tensor

QWEN2VL_PIXELS = dict(shortest_edge=56 * 56, longest_edge=28 * 28 * 1280)  # Qwen2-VL's processor defaults


def build(name: str, checkpoints: str, device: torch.device, dtype: torch.dtype) -> CinemaModel:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(f"{checkpoints}/qwen2vl")
    processor.image_processor.size = dict(QWEN2VL_PIXELS)
    cfg = preset(name, checkpoints)
    if cfg.mllm.arch is not None:  # the architecture with the processor's special-token ids
        ids = {k: processor.tokenizer.convert_tokens_to_ids(t) for k, t in (
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
        cfg.mllm.arch = {**cfg.mllm.arch, **ids}
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # every part built in dtype on the device: no fp32 copy of 14 B parameters
    try:
        with device:
            model = CinemaModel(cfg, weights=False, trained_on_meta=True)
    finally:
        torch.set_default_dtype(default)
    # Random values drawn on the device: the seeded per-parameter init draws 5.6 B numbers on the host (minutes),
    # and the values do not change the compute.
    materialize(model, device, initial_weights=False)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0.0, 0.02, generator=generator)
    model.mllm.processor = processor
    model.aligner.float()
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(model: CinemaModel, subjects, counts, steps: int, device: torch.device, out: Path) -> float:
    _sync(device)
    start = time.perf_counter()
    video = model.generate(["a man in a red jacket walks a brown dog along a beach at sunset"], subjects, counts,
                           seed=0, steps=steps)[0]
    write_mp4(video, out, model.cfg.video.fps)  # copies the frames to the host: the GPU is done
    return time.perf_counter() - start


def bench(name: str, checkpoints: str, device: str, steps: int, num_subjects: int, vae_tiling: bool) -> dict:
    device = torch.device(device)
    cuda = device.type == "cuda"
    start = time.perf_counter()
    model = build(name, checkpoints, device, torch.bfloat16)
    build_s = time.perf_counter() - start
    model.vae.set_memory(tiling=vae_tiling)
    v, flow = model.cfg.video, model.cfg.flow
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (v.height, v.width // 2, 4), dtype=np.uint8))
              for _ in range(num_subjects)]
    subjects, counts = pad_subjects([[subject_tensor(im, v.height, v.width) for im in images]], v.height, v.width)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        warmup = timed_generate(model, subjects, counts, 1, device, Path(tmp) / "warmup.mp4")  # kernels, allocator
        one = timed_generate(model, subjects, counts, 1, device, Path(tmp) / "one.mp4")
        full = timed_generate(model, subjects, counts, steps, device, Path(tmp) / "video.mp4")
    per_step = (full - one) / max(steps - 1, 1)
    shape = (latent_frames(v.num_frames), v.height // 8, v.width // 8)
    # Both CFG branches carry the subject slots (the unconditional half's masked out of attention).
    flops_per_step = 2 * dit_forward_flops(model.cfg.dit, *shape, model.cfg.t5.max_length, num_subjects)
    row = dict(
        preset=name, device=torch.cuda.get_device_name(device) if cuda else "cpu", dit_dtype="bfloat16",
        video=[v.num_frames, v.height, v.width], subjects=num_subjects, guidance=flow.guidance, batched_cfg=True,
        vae_tiling=vae_tiling, params_b=round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        build_s=round(build_s, 2), warmup_s=round(warmup, 2), steps=steps, seconds_1_step=round(one, 3), seconds=round(full, 3),
        seconds_per_step=round(per_step, 4), fixed_seconds=round(one - per_step, 3),
        sample_steps=flow.sample_steps,
        projected_seconds_per_video=round(one + (flow.sample_steps - 1) * per_step, 2),
        dit_tflops_per_s=round(flops_per_step / per_step / 1e12, 2) if steps > 1 else None,
    )
    if cuda:
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="full", choices=["tiny", "mid", "full"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=50, help="Euler steps of the timed run (the preset's: 50)")
    parser.add_argument("--subjects", type=int, default=2, help="subject images")
    parser.add_argument("--vae-tiling", action="store_true")
    parser.add_argument("--checkpoints", help="tiny checkpoints folder (default: written to a temporary folder)")
    parser.add_argument("--out", default=None, help="default: out/bench/generate.json")
    args = parser.parse_args()

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    checkpoints = args.checkpoints
    if checkpoints is None:
        from tiny_models.cinema_checkpoints import save_tiny_checkpoints

        checkpoints = str(save_tiny_checkpoints(tempfile.mkdtemp(prefix="cinema_tiny_")))
    row = bench(args.preset, checkpoints, args.device, args.steps, args.subjects, args.vae_tiling)
    write_result("generate", row, args.out)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()

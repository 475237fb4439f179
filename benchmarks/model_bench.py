"""DiT benchmark: forward+backward time, analytic FLOPs checked against torch's FlopCounterMode, and on a GPU the
full preset at paper scale (49x480x720, bf16) with and without per-block activation checkpointing: MFU and peak
memory. Writes out/bench/model.json.

    python -m benchmarks.model_bench            # CPU: tiny and mid presets (+ the GPU part when CUDA is present)
    python -m benchmarks.model_bench --gpu-only # the full DiT on one GPU
    python -m benchmarks.model_bench --gpu-only --device cpu --preset tiny --reps 1   # that code path, on CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.results import write_result
from cinema_model.config import latent_frames, preset
from cinema_model.dit import CinemaDiT
from cinema_model.flops import dit_forward_flops

SUBJECTS = 2  # subject frames per sample on CPU


def _inputs(cfg, batch: int, subjects: int, device, dtype, frames: int | None = None):
    v = cfg.video
    shape = (batch, latent_frames(frames or v.num_frames), cfg.dit.latent_channels, v.height // 8, v.width // 8)
    video = torch.randn(shape, device=device, dtype=dtype)
    refs = torch.randn(batch, subjects, *shape[2:], device=device, dtype=dtype) if subjects else None
    text = torch.randn(batch, cfg.t5.max_length, cfg.dit.text_dim, device=device, dtype=dtype)
    return video, torch.rand(batch, device=device), text, refs


def _step(dit, inputs):
    video, t, text, refs = inputs
    dit(video, t, text, refs).float().square().mean().backward()


def _dit_config(name: str):
    # The DiT's shapes only: the frozen parts' folder is never read here.
    return preset(name, checkpoints="(frozen parts not loaded)")


def cpu_bench(name: str, reps: int) -> dict:
    cfg = _dit_config(name)
    torch.manual_seed(0)
    dit = CinemaDiT(cfg.dit)
    inputs = _inputs(cfg, 1, SUBJECTS, "cpu", torch.float32)
    v = cfg.video
    analytic = dit_forward_flops(cfg.dit, latent_frames(v.num_frames), v.height // 8, v.width // 8,
                                 cfg.t5.max_length, SUBJECTS)
    # The math SDPA backend runs attention as matmuls the counter sees (CPU's fused kernel is not counted).
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            out = dit(*inputs)
        with FlopCounterMode(display=False) as backward:
            out.float().square().mean().backward()
    _step(dit, inputs)  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        _step(dit, inputs)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return dict(
        preset=name, params=sum(p.numel() for p in dit.parameters()), video=[v.num_frames, v.height, v.width],
        subjects=SUBJECTS, fwd_bwd_s=seconds, analytic_forward_flops=analytic,
        counted_forward_flops=forward.get_total_flops(), counted_backward_flops=backward.get_total_flops(),
        analytic_over_counted=analytic / forward.get_total_flops(),
        backward_over_forward=backward.get_total_flops() / forward.get_total_flops(),
        achieved_gflops=3 * analytic / seconds / 1e9,
    )


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "B200": 2250.0, "L40S": 362.0}


def peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU by its name (without sparsity), None when unknown (then give --peak-tflops)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_bench(subjects: int, reps: int, peak: float | None, name: str = "full", device: str = "cuda",
              shorter: tuple[int, ...] = ()) -> list[dict]:
    """The DiT of preset ``name`` in bf16, fwd+bwd of one sample with and without per-block activation
    checkpointing (as training.parallelize applies it), and with it at the ``shorter`` frame counts of the
    training window's other buckets. ``device="cpu"`` runs the same code path (smoke test)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    device = torch.device(device)
    cuda = device.type == "cuda"
    cfg = _dit_config(name)
    v = cfg.video
    peak = peak or peak_tflops(device)
    results = []
    for frames, checkpointing in [(v.num_frames, True), (v.num_frames, False), *((f, True) for f in shorter)]:
        flops = 3 * dit_forward_flops(cfg.dit, latent_frames(frames), v.height // 8, v.width // 8,
                                      cfg.t5.max_length, subjects)
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # built in bf16 on the device: no fp32 copy on the way
        try:
            with device:
                dit = CinemaDiT(cfg.dit)
        finally:
            torch.set_default_dtype(default)
        if checkpointing:  # per block, as the trainer applies it; the model code stays free of it
            for i, block in enumerate(dit.blocks):
                dit.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
        inputs = _inputs(cfg, 1, subjects, device, torch.bfloat16, frames)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        row = dict(preset=name, device=torch.cuda.get_device_name(device) if cuda else "cpu", dtype="bfloat16",
                   batch=1, video=[frames, v.height, v.width], subjects=subjects,
                   tokens=cfg.t5.max_length + (latent_frames(frames) + subjects) * (v.height // 16) * (v.width // 16),
                   activation_checkpointing=checkpointing, params=sum(p.numel() for p in dit.parameters()),
                   model_flops_per_step=flops, peak_tflops=peak)
        try:
            _step(dit, inputs)  # warm-up (kernel selection, allocator)
            _sync(device)
            times = []
            for _ in range(reps):
                dit.zero_grad(set_to_none=True)
                start = time.perf_counter()
                _step(dit, inputs)
                _sync(device)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            row.update(fwd_bwd_s=seconds, tflops=flops / seconds / 1e12,
                       mfu=flops / seconds / (peak * 1e12) if peak else None)
        except torch.OutOfMemoryError:
            row.update(oom=True)
        if cuda:
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        results.append(row)
        print(json.dumps(row), flush=True)
        del dit, inputs
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--subjects", type=int, default=0, help="subject frames per sample in the GPU run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float,
                        help="dense bf16 peak of the GPU for MFU (default: by its name, H100/H200: 989)")
    parser.add_argument("--preset", default="full", help="--gpu-only: the DiT's preset (tiny for a smoke test)")
    parser.add_argument("--device", default="cuda", help="--gpu-only: cuda, or cpu for a smoke test")
    parser.add_argument("--frames", type=int, nargs="*", default=[],
                        help="--gpu-only: shorter frame counts (other buckets) to step too, with checkpointing")
    parser.add_argument("--out", default=None, help="default: out/bench/model.json")
    args = parser.parse_args()

    report = {}
    if not args.gpu_only:
        report["cpu"] = [cpu_bench(name, args.reps) for name in ("tiny", "mid")]
        for row in report["cpu"]:
            print(f"{row['preset']:5s} DiT fwd+bwd {row['fwd_bwd_s'] * 1e3:8.1f} ms  params {row['params']:,}  "
                  f"FLOPs/sample fwd {row['analytic_forward_flops']:.4g} (analytic/counted "
                  f"{row['analytic_over_counted']:.4f}, bwd/fwd counted {row['backward_over_forward']:.3f})  "
                  f"{row['achieved_gflops']:.1f} GFLOP/s")
    if torch.cuda.is_available() or (args.gpu_only and args.device == "cpu"):
        report["gpu"] = gpu_bench(args.subjects, args.reps, args.peak_tflops, args.preset, args.device,
                                  tuple(args.frames))
    out = write_result("model", report, args.out)
    print(json.dumps(report.get("gpu", report), indent=2) if args.gpu_only else f"wrote {out}")


if __name__ == "__main__":
    main()

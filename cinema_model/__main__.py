"""python -m cinema_model {summary,generate}

  summary PRESET             parameters per part (built on the meta device, no weights) and DiT FLOPs per sample
  generate --prompt ... [--subject a.png ...] --out video.mp4
                             sample a video; also writes a contact sheet (subjects left, frames right)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cinema_model.config import PRESETS, latent_frames, preset
from common.typed_config import ConfigError


def _offline():
    # Weights come from local folders or the hub cache only; nothing is downloaded.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar per model
    from transformers.utils import logging

    logging.set_verbosity_error()  # the base-model load report lists the unused LM head


def _summary(args) -> dict:
    import torch

    from cinema_model.flops import dit_forward_flops
    from cinema_model.model import CinemaModel

    cfg = preset(args.preset, args.checkpoints, args.set)
    with torch.device("meta"):
        cinema = CinemaModel(cfg, "cinema", weights=False)
        t5 = CinemaModel(cfg, "aligner", weights=False).t5
    parts = {**cinema.frozen_parts(), "t5": t5, **cinema.trainable_parts()}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    v = cfg.video
    shape = (latent_frames(v.num_frames), v.height // 8, v.width // 8)
    flops = {k: dit_forward_flops(cfg.dit, *shape, cfg.t5.max_length, k) for k in (0, 6)}
    print(f"preset {args.preset}: {v.num_frames}x{v.height}x{v.width} video -> latents {shape}")
    for name, n in counts.items():
        kind = "trained" if name in cinema.trainable_parts() else "frozen"
        print(f"  {name:8s} {kind:8s} {n:>16,d}  ({n / 1e9:.3f} B)")
    print(f"  {'total':8s} {'':8s} {sum(counts.values()):>16,d}")
    for k, f in flops.items():
        print(f"  DiT forward FLOPs per sample, {k} subjects: {f:.4g} (train step x3: {3 * f:.4g})")
    return counts


def ema_weights(path: str | Path) -> Path:
    """Where the trainer's export puts the EMA of the weights at ``path``: ``trained.ema.safetensors`` beside
    ``trained.safetensors`` (training.checkpoint.export_consolidated)."""
    return Path(path).with_suffix(".ema.safetensors")


def _weights_file(args) -> Path | None:
    if not args.weights:
        if args.ema:
            raise SystemExit("--ema picks the EMA file beside --weights: give --weights too")
        return None
    path = ema_weights(args.weights) if args.ema else Path(args.weights)
    if not path.is_file():
        raise SystemExit(f"no weights file {path}" + (" (the run kept no EMA: optim.ema_decay was 0)" if args.ema else ""))
    return path


def _check_weights(cfg, weights: Path) -> None:
    """A trained part the file lacks is an error, not a silent random init."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        prefixes = {k.split(".", 1)[0] for k in f.keys()}
    needed = ["aligner", "dit"] if cfg.ablation.conditioning == "mllm" else ["dit"]
    missing = [p for p in needed if p not in prefixes]
    if missing:
        raise SystemExit(f"{weights} holds no {' or '.join(missing)} weights (keys {sorted(prefixes)}): generate "
                         "needs every trained part; a stage-1 (aligner) run's file goes to aligner.pretrained")


def _device_and_dtype(args):
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    return device, dtype


def load_for_generation(cfg, weights: Path | None, device, dtype, seed: int = 0):
    """The cinema-stage model in eval mode on ``device``, its DiT in ``dtype`` (the AlignerNet stays float32,
    the frozen parts in ``frozen_dtype``). With ``weights`` the trained parts come from that file alone: no
    initial weights are read (no CogVideoX-5B conversion) nor drawn; without, ``seed`` keys their random init."""
    from cinema_model.initial_weights import materialize
    from cinema_model.model import CinemaModel

    if weights is not None:
        _check_weights(cfg, weights)
    model = CinemaModel(cfg, device=device, trained_on_meta=True, seed=seed)
    materialize(model, device, initial_weights=weights is None)  # with weights: zeros, then the file
    if weights is not None:
        model.load_trainable(weights)
    model.dit.to(dtype)
    return model.eval()


def _generate(args) -> None:
    import time

    from PIL import Image

    from cinema_model.media import contact_sheet, write_mp4
    from cinema_model.subjects import pad_subjects, subject_tensor

    cfg = preset(args.preset, args.checkpoints, args.set)
    weights = _weights_file(args)
    device, dtype = _device_and_dtype(args)
    model = load_for_generation(cfg, weights, device, dtype, args.seed)
    if weights is None:
        print("no --weights: AlignerNet and DiT are randomly initialised", file=sys.stderr)
    model.vae.set_memory(tiling=args.vae_tiling, slicing=args.vae_slicing)
    v = cfg.video
    subjects, counts = pad_subjects([[subject_tensor(Image.open(p), v.height, v.width) for p in args.subject]],
                                    v.height, v.width)
    start = time.perf_counter()
    video = model.generate([args.prompt], subjects, counts, seed=args.seed, steps=args.steps,
                           guidance=args.guidance, batched_cfg=not args.sequential_cfg)[0]
    seconds = time.perf_counter() - start  # .cpu() in write_mp4 would wait anyway; decode() returns after the GPU
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(video, out, v.fps)
    sheet = Path(args.sheet) if args.sheet else out.with_suffix(".png")
    contact_sheet(subjects[0], video).save(sheet)
    print(f"wrote {out} ({video.shape[0]} frames {v.height}x{v.width}, sampled in {seconds:.1f} s on {device}, "
          f"DiT in {str(dtype).removeprefix('torch.')}) and {sheet}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cinema_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_model_args(p):
        p.add_argument("--checkpoints", help="folder of the tiny frozen parts (tiny and mid presets: python -m tiny_models)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
        return p

    add_model_args(sub.add_parser("summary")).add_argument("preset", choices=list(PRESETS))
    gen = add_model_args(sub.add_parser("generate"))
    gen.add_argument("--preset", default="full", choices=list(PRESETS))
    gen.add_argument("--weights", help="safetensors of the trained parts (a run's trained.safetensors, or "
                     "python -m training export); with it the DiT's CogVideoX initial weights are not loaded")
    gen.add_argument("--ema", action="store_true", help="the EMA weights beside --weights (*.ema.safetensors)")
    gen.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
    gen.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                     help="the DiT's dtype (default: bfloat16 on cuda, float32 on cpu)")
    gen.add_argument("--vae-tiling", action="store_true", help="decode in spatial tiles (less memory)")
    gen.add_argument("--vae-slicing", action="store_true", help="decode one video of a batch at a time")
    gen.add_argument("--sequential-cfg", action="store_true",
                     help="two forwards per step for CFG instead of one batched one (half the activation memory)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--subject", action="append", default=[], help="subject image (0 to 6 times)")
    gen.add_argument("--out", required=True, help="output .mp4")
    gen.add_argument("--sheet", help="contact sheet .png (default: next to --out)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int)
    gen.add_argument("--guidance", type=float)
    args = parser.parse_args(argv)

    _offline()
    try:
        if args.command == "summary":
            _summary(args)
        else:
            _generate(args)
    except ConfigError as e:  # what the user asked for cannot be built: one line, no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

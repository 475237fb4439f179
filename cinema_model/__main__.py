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

from cinema_model.config import latent_frames, preset


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


def _generate(args) -> None:
    import torch
    from PIL import Image

    from cinema_model.media import contact_sheet, write_mp4
    from cinema_model.model import CinemaModel
    from cinema_model.subjects import pad_subjects, subject_tensor

    cfg = preset(args.preset, args.checkpoints, args.set)
    torch.manual_seed(args.seed)  # fixes the trained parts' random init when no --weights are given
    model = CinemaModel(cfg).eval()
    if args.weights:
        model.load_trainable(args.weights)
    else:
        print("no --weights: AlignerNet and DiT are randomly initialised", file=sys.stderr)
    v = cfg.video
    subjects, counts = pad_subjects([[subject_tensor(Image.open(p), v.height, v.width) for p in args.subject]],
                                    v.height, v.width)
    video = model.generate([args.prompt], subjects, counts, seed=args.seed, steps=args.steps,
                           guidance=args.guidance)[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(video, out, v.fps)
    sheet = Path(args.sheet) if args.sheet else out.with_suffix(".png")
    contact_sheet(subjects[0], video).save(sheet)
    print(f"wrote {out} ({video.shape[0]} frames {v.height}x{v.width}) and {sheet}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cinema_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_model_args(p):
        p.add_argument("--checkpoints", help="folder of the tiny frozen parts (tiny and mid presets: python -m tiny_models)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
        return p

    add_model_args(sub.add_parser("summary")).add_argument("preset", choices=["tiny", "mid", "full"])
    gen = add_model_args(sub.add_parser("generate"))
    gen.add_argument("--preset", default="full", choices=["tiny", "mid", "full"])
    gen.add_argument("--weights", help="safetensors of the trained parts (CinemaModel.save_trainable)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--subject", action="append", default=[], help="subject image (0 to 6 times)")
    gen.add_argument("--out", required=True, help="output .mp4")
    gen.add_argument("--sheet", help="contact sheet .png (default: next to --out)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int)
    gen.add_argument("--guidance", type=float)
    args = parser.parse_args(argv)

    _offline()
    if args.command == "summary":
        _summary(args)
    else:
        _generate(args)


if __name__ == "__main__":
    main()

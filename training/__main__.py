"""torchrun --nproc_per_node=N -m training JOB.yaml [--set key=value ...]  (plain `python -m training` = one process)
python -m training export CHECKPOINT_DIR OUT.safetensors [--ema]  (a DCP checkpoint as generate's --weights file)"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.typed_config import ConfigError

from .config import JobError, load_train_job


def export_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m training export",
                                description="A DCP checkpoint's trained weights as one safetensors file, on one "
                                            "process without a GPU (what generate --weights loads).")
    p.add_argument("checkpoint", help="a checkpoint folder, e.g. OUT_DIR/checkpoints/step-00001000")
    p.add_argument("out", help="the .safetensors file to write")
    p.add_argument("--ema", action="store_true", help="the EMA of the weights instead of the weights")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .export import export

    try:
        export(args.checkpoint, args.out, args.ema)
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m training", description="Train CINEMA on a curated dataset (FSDP2).")
    p.add_argument("job", nargs="?", help="training job YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun every rank runs this
    try:
        job = load_train_job(args.job, args.overrides)
    except (ConfigError, OSError) as e:
        if rank0:  # every rank reads the same config
            print(f"config error: {e}", file=sys.stderr)
        return 2
    # Frozen weights come from local folders or the hub cache only; nothing is downloaded at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar per model and rank
    from .trainer import train

    try:
        train(job)
    except JobError as e:
        if rank0 or not e.shared:  # a shared error once; one rank's own error from that rank
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

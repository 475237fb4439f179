"""torchrun --nproc_per_node=N -m training JOB.yaml [--set key=value ...]  (plain `python -m training` = one process)"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.typed_config import ConfigError

from .config import JobError, load_train_job


def main(argv: list[str] | None = None) -> int:
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

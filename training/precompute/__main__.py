"""python -m training.precompute JOB.yaml [--set key=value ...]: the training job file that will train on them
(its model, data and precompute sections)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.typed_config import ConfigError

from ..config import JobError, load_train_job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.precompute",
                                description="Precompute the frozen encoders' outputs beside a dataset's shards.")
    p.add_argument("job", nargs="?", help="training job YAML (model, data and precompute sections)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # frozen weights from local folders or the hub cache only
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from common.lease import LeaseHeld

    from .runner import run

    try:
        job = load_train_job(args.job, args.overrides)
        if job.stage != "cinema":
            raise ConfigError("stage: features are for stage cinema (the aligner stage encodes captions every step)")
        result = run(job)
    except (ConfigError, JobError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except LeaseHeld as e:
        print(f"refused: {e}", file=sys.stderr)
        return 4
    print(f"features: {result['written']} shard(s) written ({result['samples']} clips, {result['samples_skipped']} "
          f"unusable clips skipped), {result['committed_before']} already committed, {len(result['failed'])} failed",
          flush=True)
    if result["failed"]:
        print("error: shards not committed (rerun the same command to do them):\n  " + "\n  ".join(result["failed"]),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m curation run JOB.yaml [--input URI] [--output URI] [--set key=value ...]"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cinema_model.typed_config import ConfigError

from .config import load_job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m curation", description="Curate raw videos into a CINEMA dataset.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a curation job (resumes where a previous run stopped)")
    r.add_argument("job", nargs="?", help="job YAML file")
    r.add_argument("--input", help="override the job's input URI")
    r.add_argument("--output", help="override the job's output URI")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_job(args.job, args.overrides, args.input, args.output)
    except (ConfigError, OSError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from .report import summary_text, write_report
    from .runner import run
    from .storage import Storage

    result = run(cfg)
    if result.sources_total and result.sources_total == result.sources_skipped:
        print("nothing to do: every source is already done")
        return 0
    cpus = cfg.ray.num_cpus or os.cpu_count() or 1
    text = summary_text(result.stats, result.seconds, result.sources_total, result.sources_skipped, cpus)
    print(text)
    print(f"report: {write_report(cfg.output, Storage(cfg.storage), result.stats, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

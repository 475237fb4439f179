"""python -m curation run JOB.yaml [--input URI] [--output URI] [--set key=value ...]
python -m curation plan JOB.yaml --clips N [--hours H | --nodes N] [--bench DIR] [--out plan.json]
python -m curation stats OUTPUT [--json] | validate OUTPUT | show OUTPUT CLIP_ID [--out PNG]  (an existing dataset)
python -m curation dedup OUTPUT [--job JOB.yaml] [--set dedup.key=value ...]  (near-duplicate groups of a dataset)
python -m curation identities OUTPUT [--job JOB.yaml] [--set identities.key=value ...]  (subjects across clips)"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from common.typed_config import ConfigError

from curation.config import load_job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m curation", description="Curate raw videos into a CINEMA dataset.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a curation job (resumes where a previous run stopped)")
    r.add_argument("job", nargs="?", help="job YAML file")
    r.add_argument("--input", help="override the job's input URI")
    r.add_argument("--output", help="override the job's output URI")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    pl = sub.add_parser("plan", help="CPU/GPU hours, cluster size, wall time and storage from the bench results")
    pl.add_argument("job", help="job YAML file")
    pl.add_argument("--clips", type=int, default=1_460_000, help="clips to curate (default: 1460000, the paper's set)")
    pl.add_argument("--hours", type=float, default=72.0, help="target wall time to size the cluster for")
    pl.add_argument("--nodes", type=int, help="plan for this many nodes instead (gives the wall time)")
    pl.add_argument("--cpus-per-node", type=int, default=96)
    pl.add_argument("--gpus-per-node", type=int, default=8)
    pl.add_argument("--bench", default="out/bench", help="folder of the bench JSON files")
    pl.add_argument("--out", default="out/plan.json", help="where to write the plan as JSON")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    d = sub.add_parser("dedup", help="find near-duplicate clips of a dataset and record which ones training leaves out")
    d.add_argument("output", help="the dataset: a local folder or s3://bucket/prefix")
    d.add_argument("--job", help="a curation job file: its storage, ray and dedup sections are used")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    i = sub.add_parser("identities", help="match subjects across the clips of each source: identities and references "
                       "from other clips, recorded beside the manifest")
    i.add_argument("output", help="the dataset: a local folder or s3://bucket/prefix")
    i.add_argument("--job", help="a curation job file: its storage and identities sections are used")
    i.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    on_dataset = {"stats": "clips, hours, per source, filter scores, subjects per clip of a dataset",
                  "validate": "check that manifest and shards match, and that shards are readable and safe",
                  "show": "one clip's frames, subject crops and metadata as a PNG"}
    for name, text in on_dataset.items():
        q = sub.add_parser(name, help=text)
        q.add_argument("output", help="the dataset: a local folder or s3://bucket/prefix")
        q.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS, or AWS_ENDPOINT_URL)")
        if name == "stats":
            q.add_argument("--json", action="store_true", help="print JSON instead of text")
        if name == "show":
            q.add_argument("clip_id")
            q.add_argument("--out", help="PNG to write (default: CLIP_ID.png)")
    args = p.parse_args(argv)
    if args.command == "plan":
        return _plan(args)
    if args.command == "dedup":
        return _dedup(args)
    if args.command == "identities":
        return _identities(args)
    if args.command in on_dataset:
        return _inspect(args)
    # This job's own log at INFO; libraries (botocore, Ray, transformers) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("curation").setLevel(logging.INFO)
    try:
        cfg = load_job(args.job, args.overrides, args.input, args.output)
    except (ConfigError, OSError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from common.lease import LeaseHeld
    from common.storage import Storage

    from curation.pipeline.faults import JobStopped
    from curation.run.runner import run
    from curation.tools.report import report_outdated, summary_text, write_report

    try:
        result = run(cfg)
    except ConfigError as e:  # the job cannot run as configured, or does not fit the cluster it runs on
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except LeaseHeld as e:
        print(f"refused: {e}", file=sys.stderr)
        return 4
    except (JobStopped, OSError) as e:
        # The environment's fault (disk, network, permissions): what was committed stays, nothing is marked done
        # that was not, and the same command goes on once it is fixed.
        what = "stopped" if isinstance(e, JobStopped) else "storage error"
        print(f"{what}: {e} (nothing committed is lost: fix this and run the same command again)", file=sys.stderr)
        return 3
    storage = Storage(cfg.storage)
    cpus = cfg.ray.num_cpus or os.cpu_count() or 1
    text = summary_text(result.stats, result.seconds, result.sources_total, result.sources_skipped, cpus)
    nothing_to_do = result.sources_total and result.sources_total == result.sources_skipped
    if nothing_to_do:
        print("nothing to do: every source is already done")
    else:
        print(text)
    try:
        if not nothing_to_do or report_outdated(storage, cfg.output):
            print(f"report: {write_report(cfg, storage, result.stats, text, result.stage_counts, result.seconds)}")
    except OSError as e:
        print(f"storage error: the dataset is committed but its report is not: {e} (fix this and run the same "
              "command again: it writes the report)", file=sys.stderr)
        return 3
    if nothing_to_do:
        return 0
    print(f"run record (resolved config, stats.json): {result.record}")
    return _verdict(result, cfg.max_error_rate)


def _verdict(result, max_error_rate: float) -> int:
    """0 when the run did its work; 1 when it wrote no clip at all, or more of its sources failed than allowed."""
    s = result.stats
    settled = s.sources_done + s.sources_failed
    failed = sum(m["status"] == "error" for m in s.sources.values())
    if settled and failed / settled > max_error_rate:
        print(f"failed: {failed} of {settled} sources had errors, above max_error_rate={max_error_rate:g} "
              "(the errors table in the report says why)", file=sys.stderr)
        return 1
    if s.job_faults:
        print(f"failed: {len(s.job_faults)} failure(s) were the job's fault (its config or code), not the sources'; "
              f"they are left for the rerun after the fix, the first: {s.job_faults[0]}", file=sys.stderr)
        return 1
    if s.environment:
        print(f"incomplete: {len(s.environment)} environment fault(s) left their sources for the rerun, the first: "
              f"{s.environment[0]}", file=sys.stderr)
        return 3
    if not s.clips_written and not s.clips_duplicate:
        print("failed: the job wrote no clip (see the dropped and errors counts above)", file=sys.stderr)
        return 1
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from common.shard_reader import ShardCorrupt
    from common.storage import Storage, StorageConfig

    from curation.tools.inspection import dataset_stats, format_stats, show_clip, validate

    storage = Storage(StorageConfig(endpoint_url=args.endpoint_url))
    output = args.output.rstrip("/")
    try:
        if args.command == "stats":
            s = dataset_stats(output, storage)
            print(json.dumps(s, indent=2) if args.json else format_stats(s))
        elif args.command == "validate":
            problems = validate(output, storage)
            for problem in problems:
                print(problem)
            print(f"{len(problems)} problem(s) in {output}" if problems else f"valid: {output}")
            return 1 if problems else 0
        else:
            out = args.out or f"{args.clip_id}.png"
            show_clip(output, storage, args.clip_id).save(out)
            print(f"{args.clip_id}: {out}")
    except (LookupError, OSError, ShardCorrupt, ValueError) as e:  # ValueError: a manifest part of another schema
        print(f"{args.command}: {e}", file=sys.stderr)
        return 2
    return 0


def _post_pass(name: str, load, run, show, storage_hint: str, args: argparse.Namespace) -> int:
    """A job over a committed dataset (dedup, identities): its job file and overrides, then one readable line per
    failure with the exit code the curation run uses for it."""
    from common.lease import LeaseHeld

    try:
        job = load(args.job, args.output, args.overrides)
    except (ConfigError, OSError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        print(show(run(job)))
    except LeaseHeld as e:
        print(f"refused: {e}", file=sys.stderr)
        return 4
    except ValueError as e:  # no clip, a manifest part of another schema, an embedding of another model
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"storage error: {e} ({storage_hint})", file=sys.stderr)
        return 3
    return 0


def _dedup(args: argparse.Namespace) -> int:
    from curation.config import load_dedup_job
    from curation.dedup.job import dedup, format_result

    return _post_pass("dedup", load_dedup_job, dedup, format_result,
                      "the tasks done so far are kept: run the same command again", args)


def _identities(args: argparse.Namespace) -> int:
    from curation.config import load_identities_job
    from curation.identities import format_result, identities

    return _post_pass("identities", load_identities_job, identities, format_result,
                      "nothing was written: run the same command again", args)


def _plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from curation.tools.capacity import Cluster, PlanError, format_plan, load_bench, make_plan, to_json

    try:
        cfg = load_job(args.job, args.overrides)
        cluster = Cluster(args.cpus_per_node, args.gpus_per_node, args.nodes)
        plan = make_plan(load_bench(args.bench, cfg), cfg, args.clips, args.hours, cluster)
    except (ConfigError, OSError, PlanError) as e:
        print(f"plan error: {e}", file=sys.stderr)
        return 2
    print(format_plan(plan, args.job))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(plan))
    print(f"plan: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

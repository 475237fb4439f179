"""The one module that knows Ray: maps the stage list onto Ray Data and streams the result into the writer."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from common.lease import Lease
from common.storage import Storage
from common.typed_config import ConfigError

from .config import JobConfig
from .executor import shard_sink, stream
from .faults import JobStopped
from .preflight import check_job
from .run_record import run_stats, write_run_record
from .shard_sink import repack
from .stages import Row, Stage, pipeline
from .writer import DatasetWriter, RunStats

log = logging.getLogger("curation")

# One Arrow schema for every row between stages, so block schemas never drift. `frames` and `keyframe` carry
# encoded images the model stages read, `pngs` the subject crops the writer stores.
ROW_SCHEMA = pa.schema([
    ("kind", pa.string()), ("source_uri", pa.string()), ("meta", pa.string()), ("mp4", pa.binary()),
    ("frames", pa.list_(pa.binary())), ("keyframe", pa.binary()), ("pngs", pa.list_(pa.binary())),
])
_BLOCK_BYTES = 64 << 20  # a chain hands rows on in blocks of about this size, so a long video streams
_BLOCKS_PER_CPU = 32


def to_table(rows: list[Row]) -> pa.Table:
    return pa.Table.from_pylist(
        [{**{k: r.get(k) for k in ROW_SCHEMA.names}, "meta": json.dumps(r["meta"])} for r in rows], schema=ROW_SCHEMA
    )


def from_table(table: pa.Table) -> list[Row]:
    rows = table.to_pylist()
    for r in rows:
        r["meta"] = json.loads(r["meta"])
    return rows


class Progress:
    """Per-stage counters (items in, out, errors, busy seconds), kept by a tiny actor every worker reports to."""

    def __init__(self):
        self.counts: dict[str, list[float]] = {}

    def add(self, stage: str, rows_in: int, rows_out: int, errors: int, seconds: float) -> None:
        c = self.counts.setdefault(stage, [0, 0, 0, 0.0])
        for i, v in enumerate((rows_in, rows_out, errors, seconds)):
            c[i] += v

    def snapshot(self) -> dict[str, list[float]]:
        return self.counts


class Chain:
    """Consecutive stages grouped by `chains`, run in one Ray worker as a stream (``curation.executor``): a source
    goes from probe to encoded clips without leaving the process. The last chain ends in the shard sink, so the
    clips are written where they are made and what leaves the worker is their manifest rows."""

    def __init__(self, stage_classes: tuple[type[Stage], ...], cfg: JobConfig, progress, last: bool):
        self.stages = [cls(cfg) for cls in stage_classes]
        for stage in self.stages:
            stage.setup()
        self.progress = progress
        self.sink = shard_sink(cfg) if last else None

    def _report(self, stage: str, consumed: int, made: int, errors: int, busy: float) -> None:
        self.progress.add.remote(stage, consumed, made, errors, busy)

    def __call__(self, table: pa.Table) -> Iterator[pa.Table]:
        block, size = [], 0
        for row in stream(self.stages, from_table(table), self._report, self.sink):
            block.append(row)
            size += sum(len(row.get(k) or b"") for k in ("mp4", "keyframe")) + sum(
                len(b) for k in ("frames", "pngs") for b in row.get(k) or ())
            if size >= _BLOCK_BYTES:
                yield to_table(block)
                block, size = [], 0
        if block:
            yield to_table(block)


_LOCAL: dict[tuple, Chain] = {}


def _chain_task(table: pa.Table, stage_classes: tuple, cfg: JobConfig, progress, last: bool) -> Iterator[pa.Table]:
    # CPU chains run as tasks (elastic, never hold CPUs while idle); each worker process builds a chain once.
    chain = _LOCAL.get(stage_classes)
    if chain is None:
        chain = _LOCAL[stage_classes] = Chain(stage_classes, cfg, progress, last)
    yield from chain(table)


def chains(stages: list[Stage]) -> list[list[Stage]]:
    """Group consecutive stages into chains, each one Ray Data operator: CPU stages together, GPU stages together
    when they need the same GPU share (a source then goes from probe to encoded clips in one worker)."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and groups[-1][-1].num_gpus == stage.num_gpus:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def init_ray(cfg: JobConfig) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's notice that the local cluster uses token authentication, its default (the job needs nothing from it).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if cfg.ray.address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind the local cluster to 127.0.0.1
        # "local": a new cluster of this process, never one a `ray start` on this machine happens to run.
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    else:
        ray.init(address=cfg.ray.address, log_to_driver=False, logging_level=logging.WARNING)


def build_dataset(sources: list[str], cfg: JobConfig, stages, progress):
    import ray

    ctx = ray.data.DataContext.get_current()
    # Ray Data's per-dataset INFO lines and its hint about the progress bars this runner replaces (after the
    # first use of ray.data above: importing it sets up its loggers).
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ctx.enable_progress_bars = False  # per-stage progress is printed by this runner instead
    ctx.print_on_execution_start = False
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # One source per task, so that no worker runs two long videos back to back while another idles (a job with
    # many more sources than CPUs gets _BLOCKS_PER_CPU blocks per CPU: its tail is a small share). Largest first:
    # the last task to start is a short one. from_items builds the blocks in the driver, with no remote task.
    blocks = min(len(sources), _BLOCKS_PER_CPU * cpus)
    if len(sources) == blocks:
        sources = Storage(cfg.storage).largest_first(sources)
    items = [{"kind": "source", "source_uri": u, "meta": "{}", "mp4": None} for u in sources]
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    gpus = ray.cluster_resources().get("GPU", 0)
    # Resources may come from the config (a caption stage's GPUs, batch size): read them from instances, which
    # are cheap to make (models load in setup(), in the workers).
    groups = chains([cls(cfg) for cls in stages])
    for i, group in enumerate(groups):
        last = i == len(groups) - 1
        num_cpus, num_gpus, batch_size = max(s.num_cpus for s in group), group[0].num_gpus, group[0].batch_size
        classes = tuple(type(s) for s in group)
        if num_gpus > gpus:
            # Ray would wait for ever for a GPU that never comes: say so instead.
            names = ", ".join(s.name for s in group)
            # Each GPU stage is named after its config section (aesthetic, caption, subjects, scenes).
            fix = " ".join(f"{s.name}.num_gpus=0" for s in group)
            raise ConfigError(f"stage(s) {names} need {num_gpus:g} GPU(s) per worker but the Ray cluster has "
                               f"{gpus:g}: add GPU nodes, or run them on CPU with {fix}")
        if num_gpus:
            # Model stages on GPUs: long-lived actors keep the weights loaded, one pool sized from the cluster.
            ds = ds.map_batches(
                Chain, fn_constructor_args=(classes, cfg, progress, last), batch_size=batch_size,
                batch_format="pyarrow", num_cpus=num_cpus, num_gpus=num_gpus,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(gpus // num_gpus))),
            )
        else:
            # One source (or one input row) per task: the chain then streams its clips out block by block.
            ds = ds.map_batches(
                _chain_task, fn_args=(classes, cfg, progress, last), batch_size=batch_size,
                batch_format="pyarrow", num_cpus=num_cpus,
            )
    return ds


@dataclass
class RunResult:
    sources_total: int
    sources_skipped: int
    stats: RunStats
    seconds: float
    stage_counts: dict
    record: str | None = None  # where this run's config and stats were written (runs/...)


def progress_line(elapsed: float, total: int, stats: RunStats, counts: dict, stages: list[str]) -> str:
    """One line of progress: sources done of total with rate and ETA, clips, errors, then rows per stage in
    pipeline order (busy seconds show where the time goes)."""
    done = stats.sources_done + stats.sources_failed
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
    dropped = sum(stats.dropped.values())
    parts = [f"sources {done}/{total} ({rate:.2f}/s, ETA {eta})",
             f"clips {stats.clips_written} written, {dropped} dropped", f"errors {sum(stats.errors.values())}"]
    parts += [f"{name} {int(counts[name][0])}" for name in stages if name in counts]
    return f"[{elapsed:6.0f}s] " + " | ".join(parts)


def _progress_printer(progress, writer: DatasetWriter, total: int, stages: list[str], t0: float, interval: float,
                      stop: threading.Event):
    import ray

    while True:
        try:
            counts = ray.get(progress.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress is best effort
            counts = {}
        if stop.is_set():
            return
        print(progress_line(time.time() - t0, total, writer.stats, counts, stages), flush=True)
        if stop.wait(interval):
            return


def _remote_repack(cfg: JobConfig):
    """The writer's repack as a task on a worker: the shards' bytes go from storage to storage, not via the driver."""

    import ray

    task = ray.remote(num_cpus=1, max_retries=3)(repack)  # made once: each merge then only submits it

    def repack_remote(pieces: list[str], keep: list[tuple[str, str]]) -> dict:
        return ray.get(task.remote(cfg.output, Storage(cfg.storage), pieces, keep))

    return repack_remote


def run(cfg: JobConfig, stages: list[type[Stage]] | None = None) -> RunResult:
    """Run the job under the output's lease. Raises ConfigError (the job cannot run as configured), LeaseHeld
    (another driver holds the output), JobStopped (an environment fault that would fail every source) or the
    output's own OSError; whatever was committed before stays, and a rerun goes on from there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    t0 = time.time()
    storage = Storage(cfg.storage)
    check_job(cfg)
    try:
        all_sources = storage.list_videos(cfg.input, cfg.extensions)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"input: {e}") from None
    if not all_sources:
        raise ConfigError(f"input: {cfg.input} lists no video (extensions {', '.join(cfg.extensions)})")
    lease = Lease(storage, cfg.output)
    lease.acquire()  # also proves the output is writable
    writer = DatasetWriter(cfg.output, storage, cfg.shards, cfg.report.sample_clips, lease.check, _remote_repack(cfg))
    stop = threading.Event()
    try:
        writer.recover()
        skip = {u for u, status in writer.done.items() if status == "ok" or not cfg.retry_errors}
        sources = [u for u in all_sources if u not in skip]
        if cfg.limit is not None:
            sources = sources[: cfg.limit]
        print(f"{len(all_sources)} source(s) found, {len(all_sources) - len(sources)} already done, {len(sources)} to process", flush=True)
        if not sources:
            return RunResult(len(all_sources), len(all_sources), writer.stats, time.time() - t0, {})
        init_ray(cfg)
        printer = None
        try:
            # On the driver's own node: a counter on a worker node would die with it and take the job along.
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            progress = ray.remote(num_cpus=0)(Progress).options(scheduling_strategy=here).remote()
            stages = stages if stages is not None else pipeline(cfg)
            ds = build_dataset(sources, cfg, stages, progress)
            names = [s.name for s in stages]
            printer = threading.Thread(target=_progress_printer, daemon=True, args=(
                progress, writer, len(sources), names, t0, cfg.ray.progress_interval_s, stop))
            printer.start()
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    writer.stats.bytes_to_driver += batch.nbytes
                    for row in from_table(batch):
                        writer.add(row)
            except JobStopped:
                writer.close()  # commit what is complete; the stopped sources are left to the rerun
                raise
            writer.close()
            counts = ray.get(progress.snapshot.remote())
            counts = {name: counts[name] for name in names if name in counts}  # in pipeline order
            stats = run_stats(writer.stats, counts, time.time() - t0, len(all_sources), len(all_sources) - len(sources))
            record = write_run_record(storage, cfg.output, cfg, stats, t0)
        finally:
            stop.set()  # the printer ends before Ray does: a call into a shut-down Ray would hide the real error
            if printer is not None:
                printer.join(timeout=15)
            ray.shutdown()
    finally:
        lease.release()
    return RunResult(len(all_sources), len(all_sources) - len(sources), writer.stats, time.time() - t0, counts, record)

"""The one module that knows Ray: maps the stage list onto Ray Data and streams the result into the writer."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import pyarrow as pa

from .config import JobConfig
from .stages import CPU_STAGES, Row, Stage
from .storage import Storage
from .writer import DatasetWriter, RunStats

log = logging.getLogger("curation")

ROW_SCHEMA = pa.schema([("kind", pa.string()), ("source_uri", pa.string()), ("meta", pa.string()), ("mp4", pa.binary())])


def to_table(rows: list[Row]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"kind": r["kind"], "source_uri": r["source_uri"], "meta": json.dumps(r["meta"]), "mp4": r["mp4"]} for r in rows],
        schema=ROW_SCHEMA,
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


class StageUDF:
    """Runs one stage in a Ray worker: Arrow in, rows through the stage, Arrow out, counts to the progress actor."""

    def __init__(self, stage_cls: type[Stage], cfg: JobConfig, progress):
        self.stage = stage_cls(cfg)
        self.stage.setup()
        self.progress = progress

    def __call__(self, table: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        rows = from_table(table)
        out = self.stage(rows)
        errors = sum(r["kind"] == "error" for r in out) - sum(r["kind"] == "error" for r in rows)
        consumed = sum(r["kind"] in self.stage.consumes for r in rows)
        self.progress.add.remote(self.stage.name, consumed, len(out) - len(rows) + consumed, errors, time.perf_counter() - t0)
        return to_table(out)


_LOCAL: dict[type, StageUDF] = {}


def _task_fn(table: pa.Table, stage_cls: type[Stage], cfg: JobConfig, progress) -> pa.Table:
    # CPU stages run as tasks (elastic, never hold CPUs while idle); each worker process keeps one stage instance.
    udf = _LOCAL.get(stage_cls)
    if udf is None:
        udf = _LOCAL[stage_cls] = StageUDF(stage_cls, cfg, progress)
    return udf(table)


def init_ray(cfg: JobConfig) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg.ray.address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind the local cluster to 127.0.0.1
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(address=cfg.ray.address, log_to_driver=False, logging_level=logging.WARNING)


def build_dataset(sources: list[str], cfg: JobConfig, stages, progress):
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # per-stage progress is printed by this runner instead
    ctx.print_on_execution_start = False
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    rows = to_table([{"kind": "source", "source_uri": u, "meta": {}, "mp4": None} for u in sources])
    ds = ray.data.from_arrow([rows.slice(i, 1) for i in range(rows.num_rows)]) if len(sources) <= 4 * cpus else (
        ray.data.from_arrow(rows).repartition(4 * cpus)
    )
    for stage_cls in stages:
        ds = ds.map_batches(
            _task_fn,
            fn_args=(stage_cls, cfg, progress),
            batch_size=stage_cls.batch_size,
            batch_format="pyarrow",
            num_cpus=stage_cls.num_cpus,
            num_gpus=stage_cls.num_gpus or None,
        )
        if stage_cls.fans_out:
            # One row per block so the clips of one long video spread over all workers.
            ds = ds.repartition(target_num_rows_per_block=1)
    return ds


@dataclass
class RunResult:
    sources_total: int
    sources_skipped: int
    stats: RunStats
    seconds: float
    stage_counts: dict


def _progress_printer(progress, writer: DatasetWriter, t0: float, interval: float, stop: threading.Event):
    import ray

    while not stop.wait(interval):
        try:
            counts = ray.get(progress.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress is best effort
            continue
        elapsed = time.time() - t0
        parts = [f"{name} {int(c[0])} done {c[0] / elapsed:.2f}/s err {int(c[2])}" for name, c in counts.items()]
        s = writer.stats
        print(f"[{elapsed:6.0f}s] " + " | ".join(parts) + f" | written {s.clips_written} clips in {s.shards_written} shards", flush=True)


def run(cfg: JobConfig, stages=CPU_STAGES) -> RunResult:
    import ray

    t0 = time.time()
    storage = Storage(cfg.storage)
    writer = DatasetWriter(cfg.output, storage, cfg.shards, cfg.report.sample_clips)
    writer.recover()
    all_sources = storage.list_videos(cfg.input, cfg.extensions)
    skip = {u for u, status in writer.done.items() if status == "ok" or not cfg.retry_errors}
    sources = [u for u in all_sources if u not in skip]
    if cfg.limit is not None:
        sources = sources[: cfg.limit]
    print(f"{len(all_sources)} source(s) found, {len(all_sources) - len(sources)} already done, {len(sources)} to process", flush=True)
    if not sources:
        return RunResult(len(all_sources), len(all_sources), writer.stats, time.time() - t0, {})
    init_ray(cfg)
    try:
        progress = ray.remote(num_cpus=0)(Progress).remote()
        ds = build_dataset(sources, cfg, stages, progress)
        stop = threading.Event()
        printer = threading.Thread(
            target=_progress_printer, args=(progress, writer, t0, cfg.ray.progress_interval_s, stop), daemon=True
        )
        printer.start()
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in from_table(batch):
                writer.add(row)
        writer.close()
        stop.set()
        counts = ray.get(progress.snapshot.remote())
    finally:
        ray.shutdown()
    return RunResult(len(all_sources), len(all_sources) - len(sources), writer.stats, time.time() - t0, counts)

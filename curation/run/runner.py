"""The one module that knows Ray: maps the stage chains onto Ray Data operators and streams what comes out of
the last one (shard rows, dropped and error rows, summaries) into the driver's writer."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from common.lease import Lease
from common.ray_session import ray_session
from common.storage import Storage
from common.typed_config import ConfigError

from curation.config import JobConfig
from curation.pipeline.faults import JobStopped, fault_of
from curation.pipeline.row import Row, from_table, to_table
from curation.pipeline.stage import Resources, Stage
from curation.run.executor import Chain
from curation.run.preflight import check_job
from curation.run.progress import StageCounts, progress_line
from curation.sink.run_record import run_stats, write_run_record
from curation.sink.shards import repack
from curation.sink.writer import DatasetWriter, RunStats
from curation.stages import pipeline

log = logging.getLogger("curation")

_BLOCK_BYTES = 64 << 20  # a chain hands rows on in blocks of about this size, so a long video streams
_BLOCKS_PER_CPU = 32


class RayChain:
    """A chain of consecutive stages (``chains``) in one Ray worker, run as a stream by the executor's ``Chain``: a
    source goes from its scene pass to encoded clips without leaving the process. The last chain ends in the shard
    sink, so the clips are written where they are made and what leaves the worker is their manifest rows. Each
    block it hands on ends with a ``progress`` row: what its stages did since the last one."""

    def __init__(self, stage_classes: tuple[type[Stage], ...], cfg: JobConfig, last: bool):
        self.counts = StageCounts()
        self.chain = Chain(cfg, stage_classes, self.counts.add, sink=last).__enter__()

    def __call__(self, table: pa.Table) -> Iterator[pa.Table]:
        block, size = [], 0
        try:
            for row in self.chain(from_table(table)):
                block.append(row)
                size += row.payload_bytes()
                if size >= _BLOCK_BYTES:
                    yield self._handed_on(block)
                    block, size = [], 0
        except OSError as e:  # the shard sink's write: Ray Data would replace the file name with its own words
            if fault_of(e) != "stop":
                raise
            raise JobStopped(str(e)) from None
        if block or self.counts.counts:
            yield self._handed_on(block)

    def _handed_on(self, block: list[Row]) -> pa.Table:
        progress = self.counts.take()
        return to_table(block + [progress] if progress else block)

    def __del__(self):
        # Ray Data deletes an actor's chain when the pool shuts down; a task worker's lives as long as its process.
        if hasattr(self, "chain"):  # not when a stage's setup failed: the chain tore itself down then
            self.chain.__exit__()


_LOCAL: dict[tuple, RayChain] = {}


def _chain_task(table: pa.Table, run: str, stage_classes: tuple, cfg: JobConfig, last: bool) -> Iterator[pa.Table]:
    # CPU chains run as tasks (elastic, never hold CPUs while idle); each worker process builds a run's chain once.
    key = (run, stage_classes)
    if key not in _LOCAL:
        for old in [k for k in _LOCAL if k[0] != run]:  # a worker kept from an earlier run on the same cluster
            del _LOCAL[old]
        _LOCAL[key] = RayChain(stage_classes, cfg, last)
    yield from _LOCAL[key](table)


def chains(stages: list[type[Stage]], cfg: JobConfig) -> list[list[type[Stage]]]:
    """Group consecutive stages into chains, each one Ray Data operator: CPU stages together, GPU stages together
    when they need the same GPU share (a source then goes from its scene pass to encoded clips in one worker)."""
    groups: list[list[type[Stage]]] = []
    for stage in stages:
        if groups and groups[-1][-1].resources(cfg).gpus == stage.resources(cfg).gpus:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def chain_resources(group: list[type[Stage]], cfg: JobConfig) -> Resources:
    """One worker runs the group's stages one row after another: the most CPUs any of them takes, the GPU share
    they have in common, the memory of all of them (each may hold its own while rows stream through)."""
    res = [s.resources(cfg) for s in group]
    return Resources(max(r.cpus for r in res), res[0].gpus, sum(r.memory_mb for r in res))


def build_dataset(sources: list[str], cfg: JobConfig, stages: list[type[Stage]]):
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # One source per task, so that no worker runs two long videos back to back while another idles (a job with
    # many more sources than CPUs gets _BLOCKS_PER_CPU blocks per CPU: its tail is a small share). Largest first:
    # the last task to start is a short one. from_items builds the blocks in the driver, with no remote task.
    blocks = min(len(sources), _BLOCKS_PER_CPU * cpus)
    if len(sources) == blocks:
        sources = Storage(cfg.storage).largest_first(sources)
    ds = ray.data.from_items(to_table([Row("source", u, {}) for u in sources]).to_pylist(), override_num_blocks=blocks)
    gpus = ray.cluster_resources().get("GPU", 0)
    run = uuid.uuid4().hex  # workers kept from an earlier run on the same cluster rebuild their chains
    groups = chains(stages, cfg)
    for i, group in enumerate(groups):
        last = i == len(groups) - 1
        res, batch_size, classes = chain_resources(group, cfg), group[0].batch_size(cfg), tuple(group)
        if res.gpus > gpus:
            # Ray would wait for ever for a GPU that never comes: say so instead.
            names = ", ".join(s.name for s in group)
            # Each GPU stage is named after its config section (aesthetic, caption, subjects, scenes).
            fix = " ".join(f"{s.name}.num_gpus=0" for s in group)
            raise ConfigError(f"stage(s) {names} need {res.gpus:g} GPU(s) per worker but the Ray cluster has "
                               f"{gpus:g}: add GPU nodes, or run them on CPU with {fix}")
        common = dict(batch_size=batch_size, batch_format="pyarrow", num_cpus=res.cpus,
                      memory=res.memory_mb * 2**20 or None)
        if res.gpus:
            # Model stages on GPUs: long-lived actors keep the weights loaded, one pool sized from the cluster.
            ds = ds.map_batches(
                RayChain, fn_constructor_args=(classes, cfg, last), num_gpus=res.gpus,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(gpus // res.gpus))), **common,
            )
        else:
            # One source (or one input row) per task: the chain then streams its clips out block by block.
            ds = ds.map_batches(_chain_task, fn_args=(run, classes, cfg, last), **common)
    return ds


@dataclass
class RunResult:
    sources_total: int
    sources_skipped: int
    stats: RunStats
    seconds: float
    stage_counts: dict
    record: str | None = None  # where this run's config and stats were written (runs/...)


def _progress_printer(counts: StageCounts, writer: DatasetWriter, total: int, stages: list[str], t0: float,
                      interval: float, stop: threading.Event):
    while not stop.is_set():
        print(progress_line(time.time() - t0, total, writer.stats, dict(counts.counts), stages), flush=True)
        stop.wait(interval)


def _remote_repack(cfg: JobConfig):
    """The writer's repack as a task on a worker: the shards' bytes go from storage to storage, not via the driver."""

    import ray

    task = ray.remote(num_cpus=1, max_retries=3)(repack)  # made once: each merge then only submits it

    def repack_remote(pieces: list[str], keep: list[tuple[str, str]]) -> dict:
        return ray.get(task.remote(cfg.output, Storage(cfg.storage), pieces, keep))

    return repack_remote


def _unwrapped(e: Exception) -> BaseException:
    """What a worker raised, not Ray's wrapping of it: the user reads "No space left on device: <file>", not a
    remote traceback in terminal colours."""
    from ray.data.exceptions import UserCodeException
    from ray.exceptions import RayTaskError

    while isinstance(e, (RayTaskError, UserCodeException)):
        inner = e.cause if isinstance(e, RayTaskError) else e.__cause__
        if inner is None:
            break
        e = inner
    return e


def run(cfg: JobConfig, stages: list[type[Stage]] | None = None) -> RunResult:
    """Run the job under the output's lease. Raises ConfigError (the job cannot run as configured), LeaseHeld
    (another driver holds the output), JobStopped (an environment fault that would fail every source) or the
    output's own OSError; whatever was committed before stays, and a rerun goes on from there."""
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
    lease.claim()  # also proves the output is writable
    writer = DatasetWriter(cfg.output, storage, cfg.shards, cfg.report.sample_clips, lease.check, _remote_repack(cfg))
    stop = threading.Event()
    try:
        # Ray starts while the lease settles (a second or more saved); nothing is written before it is confirmed.
        with ray_session(cfg.ray.address, cfg.ray.num_cpus):
            lease.confirm()
            try:
                writer.recover()
            except ValueError as e:  # a manifest part of another schema (common.contract.read_parquet_dir)
                raise ConfigError(f"output: {e}") from None
            skip = {u for u, status in writer.done.items() if status == "ok" or not cfg.retry_errors}
            sources = [u for u in all_sources if u not in skip]
            if cfg.limit is not None:
                sources = sources[: cfg.limit]
            print(f"{len(all_sources)} source(s) found, {len(all_sources) - len(sources)} already done, "
                  f"{len(sources)} to process", flush=True)
            if not sources:
                return RunResult(len(all_sources), len(all_sources), writer.stats, time.time() - t0, {})
            printer, progress = None, StageCounts()
            try:
                stages = stages if stages is not None else pipeline(cfg)
                ds = build_dataset(sources, cfg, stages)
                names = [s.name for s in stages]
                printer = threading.Thread(target=_progress_printer, daemon=True, args=(
                    progress, writer, len(sources), names, t0, cfg.ray.progress_interval_s, stop))
                printer.start()
                try:
                    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                        writer.stats.bytes_to_driver += batch.nbytes
                        for row in from_table(batch):
                            if row.kind == "progress":
                                progress.merge(row)
                            else:
                                writer.add(row)
                except Exception as e:  # noqa: BLE001 - a worker's error, without Ray's wrapping
                    error = _unwrapped(e)
                    if isinstance(error, JobStopped):
                        writer.close()  # commit what is complete; the stopped sources are left to the rerun
                    raise error from None
                try:
                    writer.close()
                except Exception as e:  # noqa: BLE001 - the last merge runs on a worker
                    raise _unwrapped(e) from None
                counts = {n: progress.counts[n] for n in names if n in progress.counts}  # in pipeline order
                stats = run_stats(writer.stats, counts, time.time() - t0, len(all_sources), len(all_sources) - len(sources))
                record = write_run_record(storage, cfg.output, cfg, stats, t0)
            finally:
                stop.set()
                if printer is not None:
                    printer.join(timeout=15)
    finally:
        lease.release()
    return RunResult(len(all_sources), len(all_sources) - len(sources), writer.stats, time.time() - t0, counts, record)

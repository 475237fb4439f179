"""Running stages over rows, as a stream: what one Ray worker does with its chain of stages (``curation.runner``),
and the local executor that does the same in this process, for tests, benchmarks and debugging a source.

Each stage sees batches of its own size; rows go on as a stage makes them, so a long video's clips never sit in
memory all at once. ``report(stage, consumed, made, errors, busy_seconds)`` receives each batch's counts.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from common.storage import Storage

from .config import JobConfig
from .shard_sink import ShardSink
from .stages.base import Row, Stage, make_row

Report = Callable[[str, int, int, int, float], None]


def _chunks(rows: Iterable[Row], size: int | None) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if size is not None and len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def through(stage: Stage, rows: Iterable[Row], report: Report) -> Iterator[Row]:
    for batch in _chunks(rows, stage.batch_size):
        # Only the time spent inside the stage counts as its busy time, not the time its rows wait downstream.
        t0 = time.perf_counter()
        out = iter(stage.stream(batch))  # a stage that returns a list does all its work here
        busy, made, errors = time.perf_counter() - t0, 0, -sum(r["kind"] == "error" for r in batch)
        while True:
            t0 = time.perf_counter()
            row = next(out, None)
            busy += time.perf_counter() - t0
            if row is None:
                break
            made, errors = made + 1, errors + (row["kind"] == "error")
            yield row
        consumed = sum(r["kind"] in stage.consumes for r in batch)
        report(stage.name, consumed, made - len(batch) + consumed, errors, busy)


def stream(stages: list[Stage], rows: Iterable[Row], report: Report, sink: ShardSink | None = None) -> Iterator[Row]:
    """``rows`` through set-up ``stages`` in order, then through ``sink`` (the pipeline's last step)."""
    for stage in stages:
        rows = through(stage, rows, report)
    return sink(rows) if sink is not None else iter(rows)


def shard_sink(cfg: JobConfig) -> ShardSink:
    return ShardSink(cfg.output, Storage(cfg.storage), cfg.shards)


def run_local(cfg: JobConfig, stage_classes: Iterable[type[Stage]], sources: list[str] | None = None,
              rows: list[Row] | None = None, sink: bool = False, report: Report = lambda *counts: None) -> list[Row]:
    """The stages (set up here, once) over ``sources`` (URIs) or ``rows``, in this process: the rows the pipeline
    sends on, shard rows included with ``sink=True`` (their shards are then in ``cfg.output``)."""
    stages = [cls(cfg) for cls in stage_classes]
    for stage in stages:
        stage.setup()
    if rows is None:
        rows = [make_row("source", uri, {}) for uri in sources or []]
    return list(stream(stages, rows, report, shard_sink(cfg) if sink else None))

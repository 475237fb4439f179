"""A chain of stages over a stream of rows, in one process: what each Ray worker runs (``curation.run.runner``),
and what runs a few sources by hand, to debug one or to measure the stages without Ray.

Each stage sees batches of its own size; rows go on as a stage makes them, so a long video's clips never sit in
memory all at once. ``report(stage, consumed, made, errors, busy_seconds)`` receives each batch's counts.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from common.storage import Storage

from curation.config import JobConfig
from curation.pipeline.row import Row
from curation.pipeline.stage import Stage
from curation.sink.shards import ShardSink

Report = Callable[[str, int, int, int, float], None]


def _chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _through(stage: Stage, batch_size: int, rows: Iterable[Row], report: Report) -> Iterator[Row]:
    for batch in _chunks(rows, batch_size):
        # Only the time spent inside the stage counts as its busy time, not the time its rows wait downstream.
        t0 = time.perf_counter()
        out = iter(stage.stream(batch))  # a stage that returns a list does all its work here
        busy, made, errors = time.perf_counter() - t0, 0, -sum(r.kind == "error" for r in batch)
        while True:
            t0 = time.perf_counter()
            row = next(out, None)
            busy += time.perf_counter() - t0
            if row is None:
                break
            made, errors = made + 1, errors + (row.kind == "error")
            if row.kind == "summary":  # a source's last row: the stage is done with it
                stage.end_source(row.source_uri)
            yield row
        consumed = sum(r.kind in stage.consumes for r in batch)
        report(stage.name, consumed, made - len(batch) + consumed, errors, busy)


class Chain:
    """The stages of ``stage_classes`` over rows, in order, then into the shard sink when ``sink`` is set (the
    pipeline's last step: shard rows come out, with the shards in ``cfg.output``). Used as a context: the stages
    are set up on entering and torn down on leaving.

        with Chain(cfg, stages) as chain:
            rows = list(chain([Row("source", uri, {})]))
    """

    def __init__(self, cfg: JobConfig, stage_classes: Iterable[type[Stage]], report: Report = lambda *counts: None,
                 sink: bool = False):
        self.stages = [(cls(cfg), cls.batch_size(cfg)) for cls in stage_classes]
        self.report = report
        self.sink = ShardSink(cfg.output, Storage(cfg.storage), cfg.shards) if sink else None

    def __enter__(self) -> "Chain":
        self._ready: list[Stage] = []
        try:
            for stage, _ in self.stages:
                stage.setup()
                self._ready.append(stage)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self._ready:
            self._ready.pop().teardown()

    def __call__(self, rows: Iterable[Row]) -> Iterator[Row]:
        for stage, batch_size in self.stages:
            rows = _through(stage, batch_size, rows, self.report)
        return self.sink(rows) if self.sink is not None else iter(rows)

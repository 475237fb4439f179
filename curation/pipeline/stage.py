"""The stage contract: a named step over rows (``curation.pipeline.row``), with its whole life here.

- ``resources(cfg)``: what one worker of the stage takes (CPUs, GPUs, memory) and ``batch_size(cfg)``, the rows
  per call, both read from the job's config: the runner sizes Ray's workers from them without building a stage.
- ``setup()``: once per worker, before the first row: load models, open clients (``__init__`` stays cheap).
- ``process(row)``: the rows one consumed row becomes (a list, or yielded: the executor streams them on as they
  come, so a long video's clips never sit in memory all at once).
- ``end_source(uri)``: called once the source's last row has passed the stage (its ``summary`` row): let go of
  what was kept for that source.
- ``teardown()``: once per worker, after the last row: release what ``setup`` took.

Stages know nothing of Ray (``curation.run.runner`` maps them onto it). A stage handles the kinds in
``consumes`` and passes every other row through untouched. A row that raises leaves as an error row, so one bad
video or clip never fails the batch or the job. A stage whose model takes the whole batch in one call subclasses
``BatchedStage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable, Iterator

from curation.config import JobConfig
from curation.pipeline.faults import SourceError, explained, fault_of
from curation.pipeline.row import Row


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage takes. Stages that share a GPU share run in one worker (``runner.chains``)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: float = 0.0  # reserved with Ray, so workers that hold much never share a node beyond its memory


def error_row(row: Row, stage: str, exc: BaseException) -> Row:
    message = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
    meta = {
        "uri": row.source_uri,
        "clip_id": row.meta.get("clip_id"),
        "stage": stage,
        "error_type": type(exc).__name__,
        "message": message or type(exc).__name__,
        "fault": fault_of(exc),
        "explained": explained(exc),
    }
    return Row("error", row.source_uri, meta)


class Stage:
    name: ClassVar[str] = "stage"
    consumes: ClassVar[tuple[str, ...]] = ("clip",)
    # A model stage's config section (caption, aesthetic, subjects): its num_gpus and batch_size size the workers.
    section: ClassVar[str | None] = None

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    @classmethod
    def resources(cls, cfg: JobConfig) -> Resources:
        return Resources(gpus=getattr(cfg, cls.section).num_gpus) if cls.section else Resources()

    @classmethod
    def batch_size(cls, cfg: JobConfig) -> int:
        return getattr(cfg, cls.section).batch_size if cls.section else 1

    def setup(self) -> None:
        """Load models or open clients, once per worker."""

    def process(self, row: Row) -> Iterable[Row]:
        raise NotImplementedError

    def end_source(self, uri: str) -> None:
        """The source's last row has passed: let go of what was kept for it."""

    def teardown(self) -> None:
        """Release what ``setup`` took, once per worker."""

    def stream(self, batch: list[Row]) -> Iterator[Row]:
        for row in batch:
            if row.kind not in self.consumes:
                yield row
                continue
            try:
                yield from self.process(row)
            except Exception as e:  # noqa: BLE001 - any failure of one row becomes that row's error record
                yield error_row(row, self.name, e)

    def __call__(self, batch: list[Row]) -> list[Row]:
        return list(self.stream(batch))


class BatchedStage(Stage):
    """A stage whose model runs once per batch: ``inputs(row)`` for each row it consumes (a row whose inputs fail
    becomes an error row), one ``predict(items)`` for all of them, then ``finish(row, result)`` per row. A result
    that is an exception fails its row only, and a ``predict`` that raises is retried item by item, so one bad
    clip never costs the others."""

    def inputs(self, row: Row):
        raise NotImplementedError

    def predict(self, items: list) -> list:
        raise NotImplementedError

    def finish(self, row: Row, result) -> Row:
        raise NotImplementedError

    def stream(self, batch: list[Row]) -> list[Row]:
        out = list(batch)
        todo = []
        for pos, row in enumerate(batch):
            if row.kind not in self.consumes:
                continue
            try:
                todo.append((pos, self.inputs(row)))
            except Exception as e:  # noqa: BLE001 - unreadable inputs fail this row only
                out[pos] = error_row(row, self.name, e)
        for (pos, _), result in zip(todo, self._isolated([item for _, item in todo])):
            row = out[pos]
            out[pos] = error_row(row, self.name, result) if isinstance(result, Exception) else self.finish(row, result)
        return out

    def _isolated(self, items: list) -> list:
        if not items:
            return []
        try:
            return self.predict(items)
        except Exception as e:  # noqa: BLE001 - isolate the item that broke the batched call
            if len(items) == 1:
                return [e]
            return [r for item in items for r in self._isolated([item])]

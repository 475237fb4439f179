"""The stage contract: a named step with per-worker resources, a one-time ``setup`` and ``__call__(batch)``.

Stages know nothing of Ray (``curation.runner`` maps them onto it). A batch is a list of rows; a row is a dict
``{"kind", "source_uri", "meta", "mp4"}``. ``kind`` says what the row is:

- ``source``: a source video, before scene detection
- ``summary``: what scene detection made of a source (``meta["num_clips"]`` candidate clips); the writer uses
  it to know when every clip of a source is accounted for
- ``clip``: one clip, ``mp4`` holds its bytes once encoded
- ``dropped``: a clip a filter rejected (kept for pass-rate statistics; its scores are in ``meta``)
- ``error``: a source or clip that failed; ``meta`` holds uri, clip_id, stage, error_type, message and
  ``fault``: whose fault it was (``curation.faults``), which decides whether the source is done

A stage handles the kinds in ``consumes`` and passes every other row through untouched. A row that raises
leaves as an error row, so one bad video or clip never fails the batch or the job. ``process`` may return a
list or yield: the runner streams a stage's rows on as they come, so a long video's clips never sit in memory
all at once. A stage whose model takes the whole batch in one call subclasses ``BatchedStage``.
"""

from __future__ import annotations

from typing import ClassVar, Iterable, Iterator

from ..encoding import EncodedClip
from ..faults import fault_of
from ..video import VideoError

Row = dict


def make_row(kind: str, source_uri: str, meta: dict, mp4: bytes | None = None) -> Row:
    return {"kind": kind, "source_uri": source_uri, "meta": meta, "mp4": mp4}


def with_clip(row: Row, clip: EncodedClip) -> Row:
    """The clip row carrying its encoded MP4, with the size and rate it was encoded at."""
    meta = {**row["meta"], "width": clip.width, "height": clip.height, "fps": clip.fps, "num_frames": clip.num_frames}
    return {**row, "meta": meta, "mp4": clip.mp4}


def error_row(row: Row, stage: str, exc: BaseException) -> Row:
    # VideoError messages are already written for people; anything else keeps its type for the errors table.
    message = str(exc) if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"
    meta = {
        "uri": row["source_uri"],
        "clip_id": row["meta"].get("clip_id"),
        "stage": stage,
        "error_type": type(exc).__name__,
        "message": message or type(exc).__name__,
        "fault": fault_of(exc),
    }
    return make_row("error", row["source_uri"], meta)


class Stage:
    name: ClassVar[str] = "stage"
    num_cpus: ClassVar[float] = 1.0
    num_gpus: ClassVar[float] = 0.0
    batch_size: ClassVar[int] = 1  # rows per call
    consumes: ClassVar[tuple[str, ...]] = ("clip",)

    def setup(self) -> None:
        """Load models or open clients, once per worker."""

    def process(self, row: Row) -> Iterable[Row]:
        raise NotImplementedError

    def stream(self, batch: list[Row]) -> Iterator[Row]:
        for row in batch:
            if row["kind"] not in self.consumes:
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
            if row["kind"] not in self.consumes:
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

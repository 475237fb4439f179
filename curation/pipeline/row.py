"""The row: what goes from stage to stage, one type for every kind.

``kind`` says what the row is and what its ``meta`` holds:

- ``source``: a source video: its URI, ``meta`` empty (the scene pass reads the rest from the source itself).
- ``summary``: what the scene pass made of a source, after its last clip: ``num_clips`` (candidate clips, kept or
  dropped), ``num_frames``, ``num_scenes``, ``num_short_scenes``, ``duration_s``, ``clip_seconds``,
  ``source_sha1``, ``source_bytes`` and ``bytes_read`` (from storage), and ``stream_index`` of ``video_streams``
  (the stream read; more than one: it was chosen). The
  writer knows from it when every clip of the source is accounted for.
- ``clip``: one clip. ``meta`` holds the manifest fields known so far (``common.contract.MANIFEST_SCHEMA``) and how
  to find its frames again (``start_pts``, ``end_pts``, ``first_pts``, ``rotation``); ``mp4`` its bytes once
  encoded. The model stages add ``aesthetic``, ``caption``, ``subject_labels``, ``subjects`` (and the subjects'
  tracks and grounding), and carry images in ``frames`` and ``pngs`` (below).
- ``dropped``: a clip a filter rejected, with its scores and ``dropped_by`` (the filter), for the pass rates.
- ``error``: a source or clip that failed: ``uri``, ``clip_id`` (None: the whole source), ``stage``,
  ``error_type``, ``message``, ``fault`` (``curation.pipeline.faults``: whose fault, which decides whether the
  source is done) and ``explained`` (a failure a source is known to cause).
- ``shard``: a shard a worker wrote (``curation.sink.shards``): ``name``, ``staged``, ``bytes`` and the manifest
  ``records`` of its clips. The clips themselves never leave the worker.
- ``progress``: per-stage counts a Ray worker's chain hands on with its rows (``curation.run.progress``):
  ``counts``, stage name to items in, items out, errors and busy seconds. Stages pass it through.

Between Ray operators rows travel as Arrow tables of ``ROW_SCHEMA`` (``to_table`` / ``from_table``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal, get_args

import pyarrow as pa

Kind = Literal["source", "summary", "clip", "dropped", "error", "shard", "progress"]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass
class Row:
    kind: Kind
    source_uri: str
    meta: dict
    mp4: bytes | None = None  # clip: its encoded MP4
    frames: list[bytes] | None = None  # clip: JPEGs of its training window for the MLLM (caption prep -> aesthetic, caption)
    pngs: list[bytes] | None = None  # clip: its subjects' RGBA crops, in contract.png_members order (subjects -> shard sink)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown row kind {self.kind!r} (one of {', '.join(KINDS)})")

    def replace(self, **changes) -> "Row":
        return dataclasses.replace(self, **changes)

    def with_meta(self, **fields) -> "Row":
        return self.replace(meta={**self.meta, **fields})

    def payload_bytes(self) -> int:
        """The bytes it carries besides ``meta``: what sizes the blocks rows travel in."""
        blobs = [self.mp4, *(self.frames or ()), *(self.pngs or ())]
        return sum(len(b) for b in blobs if b)


ROW_SCHEMA = pa.schema([
    ("kind", pa.string()), ("source_uri", pa.string()), ("meta", pa.string()), ("mp4", pa.binary()),
    ("frames", pa.list_(pa.binary())), ("pngs", pa.list_(pa.binary())),
])
_FIELDS = [f.name for f in dataclasses.fields(Row)]
assert ROW_SCHEMA.names == _FIELDS, "ROW_SCHEMA must list Row's fields in order"


def to_table(rows: list[Row]) -> pa.Table:
    return pa.Table.from_pylist(
        [{**{f: getattr(r, f) for f in _FIELDS}, "meta": json.dumps(r.meta)} for r in rows], schema=ROW_SCHEMA
    )


def from_table(table: pa.Table) -> list[Row]:
    return [Row(**{**r, "meta": json.loads(r["meta"])}) for r in table.to_pylist()]

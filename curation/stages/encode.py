"""The second decode: cut and encode the clips the scene pass could not encode from its own frames (see
``curation.one_pass``), frame-accurately from the source, upright, as H.264 (yuv420p) MP4. Clips that already
carry their MP4 pass."""

from __future__ import annotations

from fractions import Fraction
from typing import Iterator

from common.storage import Storage

from ..config import JobConfig
from ..encoding import ClipCutter, ClipSpec
from .base import Row, Stage, with_clip


def clip_spec(meta: dict) -> ClipSpec:
    return ClipSpec(
        start_pts=meta["start_pts"],
        end_pts=meta["end_pts"],
        num_frames=meta["num_frames"],
        first_pts=meta["first_pts"],
        rotation=meta["rotation"],
        source_fps=Fraction(meta["fps"]).limit_denominator(1001),
    )


class EncodeStage(Stage):
    name = "encode"
    num_cpus = 1.0

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.cutter = ClipCutter(Storage(cfg.storage), cfg.encode)

    def stream(self, batch: list[Row]) -> Iterator[Row]:
        yield from super().stream(batch)
        if any(r["kind"] == "summary" for r in batch):
            self.cutter.close()  # a source's summary follows its last clip: nothing more is cut from it

    def process(self, row: Row) -> list[Row]:
        if row["mp4"] is not None:
            return [row]
        return [with_clip(row, self.cutter.cut(row["source_uri"], clip_spec(row["meta"])))]

"""Cut each clip frame-accurately from its source and encode it upright as H.264 (yuv420p) MP4."""

from __future__ import annotations

from fractions import Fraction

from ..config import JobConfig
from ..storage import Storage
from ..video import ClipCutter, ClipSpec
from .base import Row, Stage


class EncodeStage(Stage):
    name = "encode"
    num_cpus = 1.0

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.cutter = ClipCutter(Storage(cfg.storage), cfg.encode)

    def __call__(self, batch: list[Row]) -> list[Row]:
        out = super().__call__(batch)
        if any(r["kind"] == "summary" for r in batch):
            self.cutter.close()  # a source's summary follows its last clip: nothing more is cut from it
        return out

    def process(self, row: Row) -> list[Row]:
        m = row["meta"]
        spec = ClipSpec(
            start_pts=m["start_pts"],
            end_pts=m["end_pts"],
            num_frames=m["num_frames"],
            first_pts=m["first_pts"],
            rotation=m["rotation"],
            source_fps=Fraction(m["fps"]).limit_denominator(1001),
        )
        clip = self.cutter.cut(row["source_uri"], spec)
        meta = {**m, "width": clip.width, "height": clip.height, "fps": clip.fps, "num_frames": clip.num_frames}
        return [{**row, "meta": meta, "mp4": clip.mp4}]

"""Cut each clip frame-accurately from its source and encode it upright as H.264 (yuv420p) MP4."""

from __future__ import annotations

from fractions import Fraction

from ..config import JobConfig
from ..storage import Storage
from ..video import encode_clip
from .base import Row, Stage


class EncodeStage(Stage):
    name = "encode"
    num_cpus = 1.0

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.storage = Storage(cfg.storage)

    def process(self, row: Row) -> list[Row]:
        m = row["meta"]
        clip = encode_clip(
            row["source_uri"],
            self.storage,
            start_pts=m["start_pts"],
            end_pts=m["end_pts"],
            num_frames=m["num_frames"],
            rotation=m["rotation"],
            source_fps=Fraction(m["fps"]).limit_denominator(1001),
            cfg=self.cfg.encode,
            first_pts=m["first_pts"],
        )
        meta = {**m, "width": clip.width, "height": clip.height, "fps": clip.fps, "num_frames": clip.num_frames}
        return [{**row, "meta": meta, "mp4": clip.mp4}]

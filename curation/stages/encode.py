"""The second decode: cut and encode the clips the scene pass could not encode from its own frames (see
``curation.video.one_pass``), frame-accurately from the source, upright, as H.264 (yuv420p) MP4. Clips that already
carry their MP4 pass."""

from __future__ import annotations

from fractions import Fraction
from typing import Iterator

from common.storage import Storage

from curation.config import JobConfig
from curation.pipeline.row import Row
from curation.pipeline.stage import Stage
from curation.video.encoding import ClipCutter, ClipSpec, EncodedClip


def clip_spec(meta: dict) -> ClipSpec:
    return ClipSpec(
        start_pts=meta["start_pts"],
        end_pts=meta["end_pts"],
        num_frames=meta["num_frames"],
        first_pts=meta["first_pts"],
        rotation=meta["rotation"],
        source_fps=Fraction(meta["fps"]).limit_denominator(1001),
    )


def with_clip(row: Row, clip: EncodedClip) -> Row:
    """The clip row carrying its encoded MP4, with the size and rate it was encoded at."""
    return row.replace(mp4=clip.mp4, meta={**row.meta, "width": clip.width, "height": clip.height, "fps": clip.fps,
                                           "num_frames": clip.num_frames})


class EncodeStage(Stage):
    name = "encode"

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.cutter: ClipCutter | None = None

    def setup(self) -> None:
        self.cutter = ClipCutter(Storage(self.cfg.storage), self.cfg.encode)

    def stream(self, batch: list[Row]) -> Iterator[Row]:
        for row in super().stream(batch):
            if row.kind == "summary":  # passing after its source's last clip: what cutting them read counts too
                row = row.with_meta(bytes_read=row.meta.get("bytes_read", 0) + self.cutter.bytes_read(row.source_uri))
            yield row

    def process(self, row: Row) -> list[Row]:
        if row.mp4 is not None:
            return [row]
        return [with_clip(row, self.cutter.cut(row.source_uri, clip_spec(row.meta)))]

    def end_source(self, uri: str) -> None:
        self.cutter.close()  # the cutter keeps a source open between its clips; nothing more is cut from it

    def teardown(self) -> None:
        self.cutter.close()

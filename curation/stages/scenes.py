"""Scene detection: one decode pass per source gives the cuts, frame timestamps and motion, and encodes every
clip whose frames it could hold (``curation.one_pass``); the encode stage cuts the rest.

Emits one ``clip`` row per planned clip and a ``summary`` row for the source.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterator

from ..config import JobConfig
from ..contract import make_clip_id
from ..one_pass import OnePassEncoder
from ..storage import Storage
from ..video import analyse, clip_motion, make_detector, min_gap_frames, plan_clips
from .base import Row, Stage, make_row
from .encode import with_clip
from .filters import rejection


class SceneStage(Stage):
    name = "scenes"
    num_cpus = 1.0
    consumes = ("source",)

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.storage = Storage(cfg.storage)

    def _encoder(self, src: dict, fps: Fraction) -> OnePassEncoder | None:
        sc, hold = self.cfg.scenes, self.cfg.encode.hold_mb
        if not hold:
            return None

        def keep(motion: float) -> bool:
            return rejection({"width": src["width"], "height": src["height"], "motion": motion}, self.cfg.filters) is None

        return OnePassEncoder(self.cfg.encode, src["rotation"], fps, (sc.min_clip_s, sc.max_clip_s),
                              min_gap_frames(sc.min_scene_s, src["fps"]), int(hold * 2**20), keep)

    def process(self, row: Row) -> Iterator[Row]:
        uri, src = row["source_uri"], row["meta"]
        sc = self.cfg.scenes
        fps = Fraction(src["fps"]).limit_denominator(1001)
        detectors = [make_detector(d.kind, d.args) for d in sc.detectors]
        held = self._encoder(src, fps)
        try:
            a = analyse(uri, self.storage, detectors, sc.analysis_width, src["fps"], sc.min_scene_s, sink=held)
            clips = plan_clips(a.num_frames, a.cuts, float(fps), sc.min_clip_s, sc.max_clip_s)
            for start, end in clips:
                meta = {
                    "clip_id": make_clip_id(src["source_sha1"], start, end),
                    "source_uri": uri,
                    "source_sha1": src["source_sha1"],
                    "start_frame": start,
                    "end_frame": end,
                    "start_s": a.seconds(start),
                    "end_s": a.seconds(end),
                    "fps": float(fps),
                    "width": src["width"],
                    "height": src["height"],
                    "num_frames": end - start,
                    "motion": clip_motion(a.motion, start, end),
                    # How to find the frames again: timestamps of the first frame, the end frame, the stream start.
                    "start_pts": int(a.pts[start]),
                    "end_pts": int(a.pts[end]) if end < a.num_frames else None,
                    "first_pts": int(a.pts[0]),
                    "rotation": src["rotation"],
                }
                clip = make_row("clip", uri, meta)
                encoded = held.take(start, end) if held is not None else None
                yield clip if encoded is None else with_clip(clip, encoded)
            yield make_row("summary", uri, {
                "source_sha1": src["source_sha1"],
                "num_clips": len(clips),
                "num_frames": a.num_frames,
                "num_scenes": len(a.cuts) + 1,
                "duration_s": a.seconds(a.num_frames),
                "clip_seconds": [a.seconds(e) - a.seconds(s) for s, e in clips],
            })
        finally:
            if held is not None:
                held.close()

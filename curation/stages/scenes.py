"""Scene detection: one decode pass per source gives the shot boundaries, frame timestamps and scores, and encodes
every clip whose frames it could hold (``curation.one_pass``); the encode stage cuts the rest.

Emits one ``clip`` row per planned clip, a ``dropped`` row per scene with no content (``blank``), and a
``summary`` row for the source.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterator

from common.contract import make_clip_id
from common.storage import Storage

from ..config import JobConfig
from ..model_runtime import device_for
from ..one_pass import OnePassEncoder
from ..planning import clip_scores, frame_limits, plan_scene
from ..shots import Detectors, merge_breaks, min_gap_frames, scenes
from ..video import analyse
from .base import Row, Stage, make_row
from .encode import with_clip
from .filters import rejection


class SceneStage(Stage):
    name = "scenes"
    num_cpus = 1.0
    consumes = ("source",)

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.num_gpus = cfg.scenes.num_gpus  # transnetv2 runs on it
        self.storage = Storage(cfg.storage)
        self.detectors: Detectors | None = None

    def setup(self) -> None:
        self.detectors = Detectors(self.cfg.scenes.detectors, device_for(self.num_gpus))

    def _encoder(self, src: dict, fps: Fraction, limits: tuple[int, int], min_gap: int) -> OnePassEncoder | None:
        hold = self.cfg.encode.hold_mb
        if not hold:
            return None

        def keep(scores: dict) -> bool:
            return rejection({"width": src["width"], "height": src["height"], **scores}, self.cfg.filters) is None

        return OnePassEncoder(self.cfg.encode, src["rotation"], fps, limits, min_gap, int(hold * 2**20),
                              self.cfg.scenes.trim, keep)

    def process(self, row: Row) -> Iterator[Row]:
        uri, src = row["source_uri"], row["meta"]
        sc = self.cfg.scenes
        fps = Fraction(src["fps"]).limit_denominator(1001)
        limits = frame_limits(float(fps), sc.min_clip_s, sc.max_clip_s)
        min_gap = min_gap_frames(sc.min_scene_s, src["fps"])
        held = self._encoder(src, fps, limits, min_gap)
        try:
            a = analyse(uri, self.storage, self.detectors.for_source(src["fps"]), sc.analysis_width, sink=held,
                        max_pixels=self.cfg.max_source_pixels)
            breaks = merge_breaks(a.breaks, a.num_frames, min_gap)
            shots = scenes(breaks, a.num_frames)
            per_scene = [plan_scene(s, e, a.scores, sc.trim, limits) for s, e in shots]
            planned = [p for clips in per_scene for p in clips]
            for p in planned:
                start, end = p.start, p.end
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
                    **clip_scores(a.scores, start, end, sc.trim),
                    # How to find the frames again: timestamps of the first frame, the end frame, the stream start.
                    "start_pts": int(a.pts[start]),
                    "end_pts": int(a.pts[end]) if end < a.num_frames else None,
                    "first_pts": int(a.pts[0]),
                    "rotation": src["rotation"],
                }
                if p.blank:
                    yield make_row("dropped", uri, {**meta, "dropped_by": "blank"})
                    continue
                clip = make_row("clip", uri, meta)
                encoded = held.take(start, end) if held is not None else None
                yield clip if encoded is None else with_clip(clip, encoded)
            yield make_row("summary", uri, {
                "source_sha1": src["source_sha1"],
                "num_clips": len(planned),
                "num_frames": a.num_frames,
                "num_scenes": len(shots),
                "num_short_scenes": sum(not clips for clips in per_scene),  # no candidate clip: shorter than min_clip_s
                "duration_s": a.seconds(a.num_frames),
                "clip_seconds": [a.seconds(p.end) - a.seconds(p.start) for p in planned if not p.blank],
            })
        finally:
            if held is not None:
                held.close()

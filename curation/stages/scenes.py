"""Scene detection: one reduced-size decode pass per source gives the cuts, frame timestamps and motion.

Emits one ``clip`` row per planned clip (metadata only, no pixels) and a ``summary`` row for the source.
"""

from __future__ import annotations

from fractions import Fraction

from ..config import JobConfig
from ..contract import make_clip_id
from ..storage import Storage
from ..video import analyse, clip_motion, make_detector, plan_clips
from .base import Row, Stage, make_row


class SceneStage(Stage):
    name = "scenes"
    num_cpus = 1.0
    consumes = ("source",)

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.storage = Storage(cfg.storage)

    def process(self, row: Row) -> list[Row]:
        uri, src = row["source_uri"], row["meta"]
        sc = self.cfg.scenes
        detectors = [make_detector(d.kind, d.args) for d in sc.detectors]
        a = analyse(uri, self.storage, detectors, sc.analysis_width, src["fps"], sc.min_scene_s)
        fps = Fraction(src["fps"]).limit_denominator(1001)
        clips = plan_clips(a.num_frames, a.cuts, float(fps), sc.min_clip_s, sc.max_clip_s)
        out = []
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
            out.append(make_row("clip", uri, meta))
        summary = {
            "source_sha1": src["source_sha1"],
            "num_clips": len(clips),
            "num_frames": a.num_frames,
            "num_scenes": len(a.cuts) + 1,
            "duration_s": a.seconds(a.num_frames),
            "clip_seconds": [m["meta"]["end_s"] - m["meta"]["start_s"] for m in out],
        }
        return [*out, make_row("summary", uri, summary)]

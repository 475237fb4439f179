"""The scene pass: one decode of a source gives its shot boundaries, frame timestamps and scores, the plan of its
clips (``planning.Planner``: scenes, trim, split, filters), and the MP4s of the clips whose frames it could hold
(``curation.video.one_pass``); the encode stage cuts the rest.

Emits one ``clip`` row per planned clip to keep, a ``dropped`` row per clip the plan drops (``blank`` for a scene
with no content, else the filter's name), and a ``summary`` row for the source. An HDR source under
``encode.hdr=drop`` is not decoded: one ``dropped`` row (``hdr``) stands for all of it.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterator

from common.contract import make_clip_id
from common.storage import Storage

from curation.config import JobConfig
from curation.models.runtime import device_for
from curation.pipeline.row import Row
from curation.pipeline.stage import Resources, Stage
from curation.stages.encode import with_clip
from curation.video.analysis import analyse
from curation.video.colour import is_hdr_transfer
from curation.video.detectors import Detectors
from curation.video.one_pass import OnePassEncoder
from curation.video.planning import Planner, clip_limits, clip_window, min_gap_frames


def streams(src: dict) -> dict:
    """Which of the source's video streams was read, and of how many: several means one was chosen."""
    return {"stream_index": src["stream_index"], "video_streams": src["video_streams"]}


def source_fields(src: dict) -> dict:
    """What every clip's manifest row says of its source as read: its stream and its colour."""
    return {**streams(src), "color_primaries": src["color_primaries"], "color_transfer": src["color_transfer"],
            "bit_depth": src["bit_depth"]}


def hdr_dropped(uri: str, src: dict) -> Iterator[Row]:
    """An HDR source under ``encode.hdr=drop``: one dropped candidate, the whole source, and its summary, without
    decoding it (no scores: motion is null, which the report's histograms leave out)."""
    n, seconds = src["num_frames"], src["duration_s"]
    yield Row("dropped", uri, {
        "clip_id": make_clip_id(src["source_sha1"], 0, n), "source_uri": uri, "source_sha1": src["source_sha1"],
        "start_frame": 0, "end_frame": n, "start_s": 0.0, "end_s": seconds, "fps": src["fps"],
        "width": src["width"], "height": src["height"], "num_frames": n, "motion": None, "rotation": src["rotation"],
        **source_fields(src), "dropped_by": "hdr",
    })
    yield Row("summary", uri, {"source_sha1": src["source_sha1"], "num_clips": 1, "num_frames": n, "num_scenes": 1,
                               "num_short_scenes": 0, "duration_s": seconds, "clip_seconds": [seconds], **streams(src)})


class SceneStage(Stage):
    name = "scenes"
    consumes = ("source",)

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.storage = Storage(cfg.storage)
        self.detectors: Detectors | None = None

    @classmethod
    def resources(cls, cfg: JobConfig) -> Resources:
        # transnetv2 runs on the GPU share; the one-pass encoder may hold up to encode.hold_mb of frames.
        return Resources(gpus=cfg.scenes.num_gpus, memory_mb=cfg.encode.hold_mb)

    def setup(self) -> None:
        self.detectors = Detectors(self.cfg.scenes.detectors, device_for(self.cfg.scenes.num_gpus))

    def process(self, row: Row) -> Iterator[Row]:
        uri, src = row.source_uri, row.meta
        if self.cfg.encode.hdr == "drop" and is_hdr_transfer(src["color_transfer"]):
            yield from hdr_dropped(uri, src)
            return
        sc = self.cfg.scenes
        fps = Fraction(src["fps"]).limit_denominator(1001)
        out_fps = self.cfg.encode.fps
        planner = Planner(sc.trim, clip_limits(sc, float(fps), out_fps), min_gap_frames(sc.min_scene_s, src["fps"]),
                          self.cfg.filters, src["width"], src["height"], clip_window(sc, float(fps), out_fps))
        hold = self.cfg.encode.hold_mb
        held = OnePassEncoder(self.cfg.encode, src["rotation"], fps, planner, int(hold * 2**20)) if hold else None
        try:
            a = analyse(uri, self.storage, self.detectors.for_source(src["fps"]), sc.analysis_width, sink=held,
                        max_pixels=self.cfg.max_source_pixels)
            per_scene = planner.source(a.breaks, a.num_frames, a.scores)
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
                    **p.scores,
                    # How to find the frames again: timestamps of the first frame, the end frame, the stream start.
                    "start_pts": int(a.pts[start]),
                    "end_pts": int(a.pts[end]) if end < a.num_frames else None,
                    "first_pts": int(a.pts[0]),
                    "rotation": src["rotation"],
                    **source_fields(src),
                }
                if p.dropped_by is not None:
                    yield Row("dropped", uri, {**meta, "dropped_by": p.dropped_by})
                    continue
                clip = Row("clip", uri, meta)
                encoded = held.take(start, end) if held is not None else None
                yield clip if encoded is None else with_clip(clip, encoded)
            yield Row("summary", uri, {
                "source_sha1": src["source_sha1"],
                "num_clips": len(planned),
                "num_frames": a.num_frames,
                "num_scenes": len(per_scene),
                "num_short_scenes": sum(not clips for clips in per_scene),  # no candidate clip: shorter than min_clip_s
                "duration_s": a.seconds(a.num_frames),
                "clip_seconds": [a.seconds(p.end) - a.seconds(p.start) for p in planned if p.dropped_by != "blank"],
                **streams(src),
            })
        finally:
            if held is not None:
                held.close()

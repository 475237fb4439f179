"""The scene pass: the source is opened once (``decode.open_source``): its header and first frame give what the
pass needs to know of it (size, frame rate, rotation, colour; what cannot work is refused there), and one decode on
from that frame gives its shot boundaries, frame timestamps and scores, the plan of its clips (``planning.Planner``:
scenes, trim, split, filters), and the MP4s of the clips whose frames it could hold (``curation.video.one_pass``);
the encode stage cuts the rest. With the text filter on, the clips it holds are measured for burned-in text first
(``curation.stages.text``), and those the filter drops are never encoded. The source's SHA-1, which names its
clips, is made of the same bytes as they are read (``curation.video.source_file``): each byte is pulled from
storage once.

Emits one ``clip`` row per planned clip to keep, a ``dropped`` row per clip the plan drops (``blank`` for a scene
with no content, else the filter's name, ``text`` included), and a ``summary`` row for the source, with the
source's size and the bytes read for it. An HDR source under ``encode.hdr=drop`` is not decoded: one ``dropped``
row (``hdr``) stands for all of it.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Iterator

from common.contract import make_clip_id
from common.storage import Storage

from curation.config import JobConfig
from curation.dedup.signals import clip_frames, fingerprint
from curation.models.runtime import device_for
from curation.models.text_detection import TextCheck
from curation.pipeline.row import Row
from curation.pipeline.stage import Resources, Stage
from curation.stages.encode import with_clip
from curation.stages.text import TextStage
from curation.video.analysis import Analysis, analyse
from curation.video.colour import is_hdr_transfer
from curation.video.decode import VideoInfo, open_source
from curation.video.detectors import Detectors
from curation.video.one_pass import OnePassEncoder
from curation.video.planning import Planner, clip_limits, clip_window, min_gap_frames
from curation.video.source_file import SourceFile


def streams(info: VideoInfo) -> dict:
    """Which of the source's video streams was read, and of how many: several means one was chosen."""
    return {"stream_index": info.stream_index, "video_streams": info.video_streams}


def source_fields(info: VideoInfo) -> dict:
    """What every clip's manifest row says of its source as read: its stream and its colour."""
    return {**streams(info), "color_primaries": info.color_primaries, "color_transfer": info.color_transfer,
            "bit_depth": info.bit_depth}


def read_cost(file: SourceFile) -> dict:
    """The summary's count of what reading the source took: its size and the bytes pulled from storage for it."""
    return {"source_bytes": file.size, "bytes_read": file.bytes_read}


def hdr_dropped(uri: str, info: VideoInfo, sha1: str, read: dict) -> Iterator[Row]:
    """An HDR source under ``encode.hdr=drop``: one dropped candidate, the whole source, and its summary, without
    decoding it (no scores: motion is null, which the report's histograms leave out)."""
    n, seconds = info.num_frames, info.duration_s
    yield Row("dropped", uri, {
        "clip_id": make_clip_id(sha1, 0, n), "source_uri": uri, "source_sha1": sha1,
        "start_frame": 0, "end_frame": n, "start_s": 0.0, "end_s": seconds, "fps": info.fps,
        "width": info.width, "height": info.height, "num_frames": n, "motion": None, "rotation": info.rotation,
        **source_fields(info), "dropped_by": "hdr",
    })
    yield Row("summary", uri, {"source_sha1": sha1, "num_clips": 1, "num_frames": n, "num_scenes": 1,
                               "num_short_scenes": 0, "duration_s": seconds, "clip_seconds": [seconds], **streams(info),
                               **read})


# A scene worker's own memory, before the frames it holds: Python, Ray, PyAV, OpenCV, the detectors' and the text
# check's models, the decoder's and the clips' x264 encoders' buffers. Measured in a Ray worker: 0.3 GiB set up
# (0.5 with the text filter), 1.15-1.3 GiB at its peak on a 720p montage with part of the hold in use. Reserved on
# top of encode.hold_mb, so Ray never packs more scene workers on a node than its memory holds. With the caption
# prep chained in (the demo job) a worker peaked at 1.5 GiB, and Ray wants a quarter more than a peak.
WORKER_MB = 1024


class SceneStage(Stage):
    name = "scenes"
    consumes = ("source",)

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.storage = Storage(cfg.storage)
        self.detectors: Detectors | None = None
        self.text: TextCheck | None = None

    @classmethod
    def resources(cls, cfg: JobConfig) -> Resources:
        # transnetv2 runs on the GPU share; the worker needs its own memory, then the one-pass encoder may hold up
        # to encode.hold_mb of frames.
        return Resources(gpus=cfg.scenes.num_gpus, memory_mb=WORKER_MB + cfg.encode.hold_mb)

    def setup(self) -> None:
        self.detectors = Detectors(self.cfg.scenes.detectors, device_for(self.cfg.scenes.num_gpus))
        if self.cfg.text.enabled and self.cfg.encode.hold_mb:  # without holding, every clip goes to the text stage
            self.text = TextCheck.load(self.cfg)  # one intra-op thread: the worker's one CPU

    def process(self, row: Row) -> Iterator[Row]:
        uri = row.source_uri
        held = None
        try:
            with open_source(uri, self.storage, self.cfg.max_source_pixels) as source:
                info, file = source.info, source.video.file
                drop = self.cfg.encode.hdr == "drop" and is_hdr_transfer(info.color_transfer)
                if not drop:
                    fps = Fraction(info.fps).limit_denominator(1001)
                    planner = self._planner(info, fps)
                    hold = int(self.cfg.encode.hold_mb * 2**20)
                    held = (OnePassEncoder(self.cfg.encode, info.rotation, fps, planner, hold, self.text)
                            if hold else None)
                    a = analyse(source, self.detectors.for_source(info.fps), self.cfg.scenes.analysis_width, sink=held)
                # The SHA-1 of the bytes decoded, and of those the decoder never asked for (an HDR source to drop is
                # not decoded: all of it after its first frame), read on through the same file.
                sha1, read = file.sha1(), read_cost(file)
            # The container is closed before the first row leaves.
            if drop:
                yield from hdr_dropped(uri, info, sha1, read)
            else:
                yield from self._clips(uri, info, fps, sha1, read, planner, a, held)
        finally:
            if held is not None:
                held.close()

    def _planner(self, info: VideoInfo, fps: Fraction) -> Planner:
        sc, out_fps = self.cfg.scenes, self.cfg.encode.fps
        return Planner(sc.trim, clip_limits(sc, float(fps), out_fps), min_gap_frames(sc.min_scene_s, info.fps),
                       self.cfg.filters, info.width, info.height, clip_window(sc, float(fps), out_fps))

    def _clips(self, uri: str, info: VideoInfo, fps: Fraction, sha1: str, read: dict, planner: Planner, a: Analysis,
               held: OnePassEncoder | None) -> Iterator[Row]:
        """A ``clip`` or ``dropped`` row per planned clip, then the source's ``summary``."""
        per_scene = planner.source(a.breaks, a.num_frames, a.scores)
        planned = [p for clips in per_scene for p in clips]
        for p in planned:
            start, end = p.start, p.end
            meta = {
                "clip_id": make_clip_id(sha1, start, end),
                "source_uri": uri,
                "source_sha1": sha1,
                "start_frame": start,
                "end_frame": end,
                "start_s": a.seconds(start),
                "end_s": a.seconds(end),
                "fps": float(fps),
                "width": info.width,
                "height": info.height,
                "num_frames": end - start,
                **p.scores,
                "fingerprint": fingerprint([int(a.hashes[i]) for i in clip_frames(start, end)]),
                # How to find the frames again: timestamps of the first frame, the end frame, the stream start.
                "start_pts": int(a.pts[start]),
                "end_pts": int(a.pts[end]) if end < a.num_frames else None,
                "first_pts": int(a.pts[0]),
                "rotation": info.rotation,
                **source_fields(info),
            }
            text = held.text_scores(start, end) if held is not None and p.dropped_by is None else None
            if text is not None:
                meta.update(text)
                if not self.text.keeps(text):
                    yield Row("dropped", uri, {**meta, "dropped_by": TextStage.name})
                    continue
            if p.dropped_by is not None:
                yield Row("dropped", uri, {**meta, "dropped_by": p.dropped_by})
                continue
            clip = Row("clip", uri, meta)
            encoded = held.take(start, end) if held is not None else None
            yield clip if encoded is None else with_clip(clip, encoded)
        yield Row("summary", uri, {
            "source_sha1": sha1,
            "num_clips": len(planned),
            "num_frames": a.num_frames,
            "num_scenes": len(per_scene),
            "num_short_scenes": sum(not clips for clips in per_scene),  # no candidate clip: shorter than min_clip_s
            "duration_s": a.seconds(a.num_frames),
            "clip_seconds": [a.seconds(p.end) - a.seconds(p.start) for p in planned if p.dropped_by != "blank"],
            **streams(info),
            **read,
        })

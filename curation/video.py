"""Video I/O on PyAV: probe, one analysis pass (scene detection + motion), frame-accurate cut and H.264 encode.

Frames are identified by their presentation timestamp (pts) recorded during the analysis pass, so cuts stay
exact for variable frame rate sources and for streams whose first timestamp is not 0.
"""

from __future__ import annotations

import io
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect import detectors as sd

from .config import EncodeConfig
from .storage import Storage, is_local


class VideoError(Exception):
    """A source cannot be read or decoded; the message names the problem in plain words."""


@dataclass
class VideoInfo:
    width: int  # as displayed, after rotation
    height: int
    fps: float
    duration_s: float
    num_frames: int  # the container's estimate; the analysis pass counts exactly
    rotation: int  # clockwise degrees to apply to decoded frames to make them upright: 0, 90, 180, 270
    codec: str


@dataclass
class Analysis:
    pts: np.ndarray  # int64, one per decoded frame, in presentation order
    time_base: Fraction
    cuts: list[int]  # frame indices where a new scene starts (never 0)
    motion: np.ndarray  # float32 per frame: mean |gray[i] - gray[i-1]| at analysis size (0 for frame 0)

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def seconds(self, frame: int) -> float:
        """Time of a frame boundary relative to the first frame; frame == num_frames is the end of the video."""
        if frame < self.num_frames:
            return float((int(self.pts[frame]) - int(self.pts[0])) * self.time_base)
        step = int(np.median(np.diff(self.pts))) if self.num_frames > 1 else 0
        return float((int(self.pts[-1]) + step - int(self.pts[0])) * self.time_base)


@contextmanager
def open_video(uri: str, storage: Storage) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open ``uri`` and its first video stream, turning every failure into a VideoError that says why."""
    local = is_local(uri)
    try:
        # Local files go straight to FFmpeg's own I/O; remote ones through a (retrying) fsspec file object.
        source = uri.removeprefix("file://") if local else storage.open(uri)
        if local and not os.path.isfile(source):
            raise FileNotFoundError(source)
        container = av.open(source, mode="r")
    except FileNotFoundError:
        raise VideoError(f"file not found: {uri}") from None
    except (av.error.FFmpegError, OSError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise VideoError(f"not a readable video container ({reason})") from None
    with container:
        if not container.streams.video:
            raise VideoError("the file has no video stream")
        yield container, container.streams.video[0]


def _rotation(frame: av.VideoFrame) -> int:
    # PyAV reports the display matrix's counter-clockwise angle; turn it into a clockwise fix in 0/90/180/270.
    return int(round(-frame.rotation / 90.0)) % 4 * 90


def _upright(frame: av.VideoFrame, rotation: int) -> av.VideoFrame:
    if not rotation:
        return frame
    rgb = np.rot90(frame.to_ndarray(format="rgb24"), k=-rotation // 90)
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")


def probe(uri: str, storage: Storage) -> VideoInfo:
    """Container metadata plus one decoded frame (proves the stream decodes and gives the rotation)."""
    with open_video(uri, storage) as (container, stream):
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoError("the video stream has no frame rate")
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.error.FFmpegError) as e:
            raise VideoError(f"no frame could be decoded ({type(e).__name__}: {e})") from None
        rotation = _rotation(first)
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        frames = stream.frames or int(round(duration * float(rate)))
        return VideoInfo(w, h, float(rate), duration, frames, rotation, stream.codec_context.name)


def make_detector(name: str, args: dict):
    """A PySceneDetect detector by name, with its own defaults unless ``args`` overrides them."""
    classes = {
        "adaptive": sd.AdaptiveDetector,
        "content": sd.ContentDetector,
        "threshold": sd.ThresholdDetector,
        "histogram": sd.HistogramDetector,
        "hash": sd.HashDetector,
    }
    try:
        return classes[name](**args)
    except TypeError as e:
        raise ValueError(f"scenes.detector_args do not fit the {name} detector: {e}") from None


def analyse(uri: str, storage: Storage, detectors: list, analysis_width: int, fps: float, min_scene_s: float) -> Analysis:
    """Decode every frame once at reduced size: feed the scene detectors and measure frame-to-frame motion."""
    pts: list[int] = []
    motion: list[float] = []
    cuts: list[int] = []
    prev = None
    with open_video(uri, storage) as (container, stream):
        stream.thread_type = "AUTO"
        size = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                if size is None:
                    scale = min(1.0, analysis_width / frame.width)
                    size = (max(2, round(frame.width * scale)), max(2, round(frame.height * scale)))
                pts.append(frame.pts if frame.pts is not None else (pts[-1] + 1 if pts else 0))
                # Convert at full size, then area-resize, exactly as PySceneDetect does: its thresholds are tuned
                # on those pixels, and resizing in YUV first shifts near-black frames enough to add fade cuts.
                small = cv2.resize(frame.to_ndarray(format="bgr24"), size, interpolation=cv2.INTER_AREA)
                gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
                motion.append(0.0 if prev is None else float(cv2.absdiff(gray, prev).mean()))
                prev = gray
                tc = FrameTimecode(i, fps)
                for detector in detectors:
                    cuts += [int(c.frame_num) for c in detector.process_frame(tc, small)]
        except av.error.FFmpegError as e:
            if not pts:
                raise VideoError(f"decoding failed before the first frame ({e})") from None
            # A damaged tail: keep the frames decoded so far, as players do.
        if not pts:
            raise VideoError("the video stream holds no frames")
        for detector in detectors:
            cuts += [int(c.frame_num) for c in detector.post_process(FrameTimecode(len(pts), fps))]
        time_base = Fraction(stream.time_base)
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    if np.any(order != np.arange(len(order))):
        raise VideoError("frame timestamps are not in presentation order")
    return Analysis(
        pts=np.asarray(pts, dtype=np.int64),
        time_base=time_base,
        cuts=merge_cuts(cuts, len(pts), max(1, round(min_scene_s * fps))),
        motion=np.asarray(motion, dtype=np.float32),
    )


def merge_cuts(cuts: list[int], num_frames: int, min_gap: int) -> list[int]:
    """Combine the cuts of several detectors; a cut closer than ``min_gap`` frames to the previous one or to
    the start is ignored (PySceneDetect's min_scene_len, applied across detectors and from frame 0)."""
    kept: list[int] = []
    for c in sorted(set(cuts)):
        if min_gap <= c < num_frames and c - (kept[-1] if kept else 0) >= min_gap:
            kept.append(c)
    return kept


def plan_clips(num_frames: int, cuts: list[int], fps: float, min_s: float, max_s: float) -> list[tuple[int, int]]:
    """Scenes from cut points; drop those shorter than ``min_s``; split longer than ``max_s`` evenly."""
    bounds = [0, *[c for c in cuts if 0 < c < num_frames], num_frames]
    min_len = max(1, math.ceil(min_s * fps - 1e-6))
    max_len = max(min_len, math.floor(max_s * fps + 1e-6))
    clips = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        length = end - start
        if length < min_len:
            continue
        parts = math.ceil(length / max_len)
        edges = [start + round(k * length / parts) for k in range(parts + 1)]
        clips += [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b - a >= min_len]
    return clips


def clip_motion(motion: np.ndarray, start: int, end: int) -> float:
    """Mean frame difference inside a clip (the difference across its first frame belongs to the cut)."""
    inner = motion[start + 1 : end]
    return float(inner.mean()) if len(inner) else 0.0


def output_size(width: int, height: int, max_short_side: int | None) -> tuple[int, int]:
    """Even dimensions (yuv420p needs them), scaled so the short side is at most ``max_short_side``."""
    scale = 1.0
    if max_short_side and min(width, height) > max_short_side:
        scale = max_short_side / min(width, height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


@dataclass
class EncodedClip:
    mp4: bytes
    num_frames: int
    width: int
    height: int
    fps: float


def encode_clip(
    uri: str,
    storage: Storage,
    start_pts: int,
    end_pts: int | None,
    num_frames: int,
    rotation: int,
    source_fps: Fraction,
    cfg: EncodeConfig,
    first_pts: int,
) -> EncodedClip:
    """Cut frames [start_pts, end_pts) (``num_frames`` of them) and encode them upright as H.264 in MP4."""
    rate = Fraction(cfg.fps).limit_denominator(1001) if cfg.fps else source_fps
    buf = io.BytesIO()
    written = 0
    with open_video(uri, storage) as (container, stream):
        stream.thread_type = "AUTO"
        if start_pts > first_pts:
            container.seek(start_pts, stream=stream, backward=True, any_frame=False)
        out = av.open(buf, mode="w", format="mp4")
        ostream = None
        tick = Fraction(0)  # next output time (s) when resampling the frame rate
        prev = None
        taken = 0

        def emit(frame: av.VideoFrame) -> None:
            nonlocal ostream, written
            frame = _upright(frame, rotation)
            if ostream is None:
                ostream = out.add_stream(cfg.codec, rate=rate)
                ostream.width, ostream.height = output_size(frame.width, frame.height, cfg.max_short_side)
                ostream.pix_fmt = "yuv420p"
                ostream.codec_context.thread_count = cfg.threads
                ostream.options = {"crf": str(cfg.crf), "preset": cfg.preset}
            if (frame.width, frame.height, frame.format.name) != (ostream.width, ostream.height, "yuv420p"):
                frame = frame.reformat(width=ostream.width, height=ostream.height, format="yuv420p")
            frame.pts = written
            frame.time_base = 1 / rate
            frame.pict_type = av.video.frame.PictureType.NONE
            out.mux(ostream.encode(frame))
            written += 1

        try:
            for frame in container.decode(stream):
                pts = frame.pts
                if pts is None or pts < start_pts:
                    continue
                if (end_pts is not None and pts >= end_pts) or taken >= num_frames:
                    break
                taken += 1
                if not cfg.fps:
                    emit(frame)
                    continue
                t = (pts - start_pts) * Fraction(stream.time_base)
                if prev is not None:
                    while tick < t:
                        emit(prev)
                        tick += 1 / rate
                prev = frame
        except av.error.FFmpegError as e:
            if not taken:
                raise VideoError(f"decoding the clip failed ({e})") from None
        if cfg.fps and prev is not None:
            clip_end = Fraction(num_frames) / source_fps
            while tick < clip_end:
                emit(prev)
                tick += 1 / rate
        if taken < num_frames:
            raise VideoError(f"clip cut short: decoded {taken} of {num_frames} frames")
        out.mux(ostream.encode(None))
        width, height = ostream.width, ostream.height
        out.close()
    return EncodedClip(buf.getvalue(), written, width, height, float(rate))

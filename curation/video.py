"""Video I/O on PyAV: probe, one analysis pass (shot detection + frame scores), frame-accurate cut and H.264 encode.

Frames are identified by their presentation timestamp (pts) recorded during the analysis pass, so cuts stay
exact for variable frame rate sources and for streams whose first timestamp is not 0.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Protocol

import av
import cv2
import numpy as np

from common.storage import Storage, is_local

from .config import EncodeConfig
from .faults import fault_of
from .planning import Scores
from .shots import Break, Detector


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


MIN_FPS, MAX_FPS = 0.1, 1000.0  # frame rates a real video stream has (a slide show .. a high-speed camera)

# A gap between two frames longer than this is a broken timeline (a damaged or spliced stream), not a frame shown
# that long: it is a break no clip crosses, and the time it skips is not counted.
JUMP_S = 10.0


@dataclass
class Analysis:
    pts: np.ndarray  # int64, one per decoded frame, in presentation order: where to find the frames again
    time_base: Fraction
    breaks: list[Break]  # every detector's breaks, in order, not yet merged (``shots.merge_breaks``)
    scores: Scores  # per frame, at analysis size
    timeline: np.ndarray  # pts with every timestamp jump (JUMP_S) closed up to one frame step: what time is

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def seconds(self, frame: int) -> float:
        """Time of a frame boundary relative to the first frame; frame == num_frames is the end of the video."""
        t = self.timeline
        if frame < self.num_frames:
            return float((int(t[frame]) - int(t[0])) * self.time_base)
        step = int(t[-1] - t[-2]) if self.num_frames > 1 else 0  # the last frame lasts as long as the one before
        return float((int(t[-1]) + step - int(t[0])) * self.time_base)


def _closed_up(pts: np.ndarray, jump: int) -> np.ndarray:
    """``pts`` with every step larger than ``jump`` replaced by the median step."""
    steps = np.diff(pts)
    if not len(steps) or not np.any(steps > jump):
        return pts
    steps[steps > jump] = int(np.median(steps[steps <= jump])) if np.any(steps <= jump) else 0
    return np.concatenate([pts[:1], pts[0] + np.cumsum(steps)])


def decoded(container: av.container.InputContainer, stream) -> Iterator[tuple[av.VideoFrame, bool]]:
    """Every frame of ``stream`` and whether it is damaged: flagged corrupt by the decoder, or decoded after a
    corrupt frame or a packet the decoder rejected, until the next keyframe (the frames between predict from the
    damage). A rejected packet loses its frames, not the rest of the stream."""
    damaged = False
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            if fault_of(e) != "source":
                raise
            damaged = True
            continue
        for frame in frames:
            damaged = (damaged and not frame.key_frame) or frame.is_corrupt
            yield frame, damaged


@contextmanager
def open_video(uri: str, storage: Storage) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open ``uri`` and its first video stream, turning every failure into a VideoError that says why."""
    local = is_local(uri)
    try:
        # Local files go straight to FFmpeg's own I/O; remote ones through a (retrying) fsspec file object.
        if local:
            source = uri.removeprefix("file://")
            if os.path.exists(source) and not os.path.isfile(source):
                raise VideoError(f"not a regular file (a folder, fifo or device): {uri}")
            if not os.path.exists(source):
                raise FileNotFoundError(source)
        else:
            source = storage.open(uri)
        container = av.open(source, mode="r")
    except FileNotFoundError:
        raise VideoError(f"file not found: {uri}") from None
    except (av.error.FFmpegError, OSError) as e:
        if fault_of(e) != "source":
            raise  # a permission, network or disk problem: not the source's fault (curation.faults)
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise VideoError(f"not a readable video container ({reason})") from None
    with container:
        if not container.streams.video:
            raise VideoError("the file has no video stream")
        yield container, container.streams.video[0]


def _rotation(frame: av.VideoFrame) -> int:
    # PyAV reports the display matrix's counter-clockwise angle; turn it into a clockwise fix in 0/90/180/270.
    return int(round(-frame.rotation / 90.0)) % 4 * 90


def _i420_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U and V of an even-sized yuv420p frame. Split by size, not by rows: with h/2 odd (160x90) the chroma
    planes do not fill whole rows of the packed array."""
    w, h = frame.width, frame.height
    flat = frame.to_ndarray().ravel()
    c = (w // 2) * (h // 2)
    return flat[: w * h].reshape(h, w), flat[w * h : w * h + c].reshape(h // 2, w // 2), flat[w * h + c :].reshape(h // 2, w // 2)


def _upright(frame: av.VideoFrame, rotation: int) -> av.VideoFrame:
    if not rotation:
        return frame
    k = -rotation // 90
    w, h = frame.width, frame.height
    if frame.format.name != "yuv420p" or w % 2 or h % 2:
        rgb = np.rot90(frame.to_ndarray(format="rgb24"), k)
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    # Turn the Y, U and V planes themselves: 2x2 chroma subsampling is symmetric, so no colour conversion is needed.
    y, u, v = _i420_planes(frame)
    planes = [np.rot90(p, k).ravel() for p in (y, u, v)]
    out_w = h if rotation in (90, 270) else w
    return av.VideoFrame.from_ndarray(np.concatenate(planes).reshape(-1, out_w), format="yuv420p")


def _small_bgr(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """BGR pixels area-resized to ``size`` (even sides). For yuv420p the Y, U and V planes are resized first and
    only the small frame is converted: ~3x cheaper than converting at full size, and on every test and benchmark
    video the detectors give the same cuts (averaging commutes with the linear colour conversion)."""
    w, h = frame.width, frame.height
    if frame.format.name != "yuv420p" or w % 2 or h % 2:
        return cv2.resize(frame.to_ndarray(format="bgr24"), size, interpolation=cv2.INTER_AREA)
    y, u, v = _i420_planes(frame)
    sw, sh = size
    planes = [
        cv2.resize(y, size, interpolation=cv2.INTER_AREA),
        cv2.resize(u, (sw // 2, sh // 2), interpolation=cv2.INTER_AREA),
        cv2.resize(v, (sw // 2, sh // 2), interpolation=cv2.INTER_AREA),
    ]
    return cv2.cvtColor(np.concatenate([p.ravel() for p in planes]).reshape(sh * 3 // 2, sw), cv2.COLOR_YUV2BGR_I420)


def probe(uri: str, storage: Storage, max_pixels: int | None = None) -> VideoInfo:
    """Container metadata plus one decoded frame (proves the stream decodes and gives the rotation). A stream whose
    header declares more than ``max_pixels`` per frame is refused before any frame is decoded: a hostile or broken
    header must not make a worker allocate gigabytes."""
    with open_video(uri, storage) as (container, stream):
        declared = stream.codec_context.width * stream.codec_context.height
        if max_pixels is not None and declared > max_pixels:
            raise VideoError(f"frame size {stream.codec_context.width}x{stream.codec_context.height} is above the "
                             f"limit of {max_pixels} pixels (max_source_pixels)")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoError("the video stream has no frame rate")
        if not MIN_FPS <= float(rate) <= MAX_FPS:
            raise VideoError(f"the frame rate {float(rate):g} fps is outside {MIN_FPS:g}..{MAX_FPS:g} (a broken header)")
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


class FrameSink(Protocol):
    """Sees every frame the analysis pass decodes, with the breaks released at it (``one_pass``)."""

    def add(self, index: int, frame: av.VideoFrame, pts: int, scores: tuple[float, ...], breaks: list[Break],
            settled: int) -> None: ...

    def finish(self, num_frames: int, breaks: list[Break]) -> None: ...


def analyse(uri: str, storage: Storage, detectors: list[Detector], analysis_width: int,
            sink: FrameSink | None = None, max_pixels: int | None = None) -> Analysis:
    """Decode every frame once at reduced size: feed the shot detectors and score each frame (motion, luma,
    contrast, damaged). ``sink`` gets each full-size frame as well, so clips can be encoded in this same pass, and
    the breaks in order of their start: a break is released once every detector has settled past its start.
    Every decoded frame is held to ``max_pixels``, not only the header: a stream may change its size midway."""
    pts: list[int] = []
    scores: list[tuple[float, ...]] = []
    pending: list[Break] = []
    released: list[Break] = []
    prev = None
    with open_video(uri, storage) as (container, stream):
        stream.thread_type = "AUTO"
        jump = JUMP_S / float(stream.time_base)
        size = None
        try:
            for i, (frame, damaged) in enumerate(decoded(container, stream)):
                if max_pixels is not None and frame.width * frame.height > max_pixels:
                    raise VideoError(f"frame {i} is {frame.width}x{frame.height}, above the limit of {max_pixels} "
                                     "pixels (max_source_pixels)")
                if size is None:
                    scale = min(1.0, analysis_width / frame.width)
                    size = (max(2, round(frame.width * scale / 2) * 2), max(2, round(frame.height * scale / 2) * 2))
                pts.append(frame.pts if frame.pts is not None else (pts[-1] + 1 if pts else 0))
                if i and pts[-1] - pts[-2] > jump:
                    pending.append(Break(i, i + 1))  # a span, which no merge rule drops: no clip crosses a jump
                small = _small_bgr(frame, size)
                gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
                mean, std = cv2.meanStdDev(gray)
                motion = 0.0 if prev is None else float(cv2.absdiff(gray, prev).mean())
                scores.append((motion, float(mean[0, 0]), float(std[0, 0]), float(damaged)))
                prev = gray
                pending += [b for d in detectors for b in d.process(i, small)]
                settled = min((d.settled() for d in detectors), default=i + 1)
                ready = sorted(b for b in pending if b.start < settled)
                if ready:
                    pending = [b for b in pending if b.start >= settled]
                    released += ready
                if sink is not None:
                    sink.add(i, frame, pts[-1], scores[-1], ready, settled)
        except av.error.FFmpegError as e:
            if not pts:
                raise VideoError(f"decoding failed before the first frame ({e})") from None
            # A damaged tail: keep the frames decoded so far, as players do.
        if not pts:
            raise VideoError("the video stream holds no frames")
        last = sorted(pending + [b for d in detectors for b in d.finish(len(pts))])
        if sink is not None:
            sink.finish(len(pts), last)
        time_base = Fraction(stream.time_base)
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    if np.any(order != np.arange(len(order))):
        raise VideoError("frame timestamps are not in presentation order")
    pts_array = np.asarray(pts, dtype=np.int64)
    return Analysis(
        pts=pts_array,
        time_base=time_base,
        breaks=sorted(released + last),
        scores=Scores.of(scores),
        timeline=_closed_up(pts_array, int(jump)),
    )


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


@dataclass
class ClipSpec:
    """Where a clip lies in its source: frames with start_pts <= pts < end_pts, ``num_frames`` of them."""

    start_pts: int
    end_pts: int | None  # None: to the end of the source
    num_frames: int
    first_pts: int  # the source's first frame: no seek is needed to start there
    rotation: int
    source_fps: Fraction


class ClipCutter:
    """Cuts clips frame-accurately and encodes them upright as H.264 (yuv420p) MP4.

    Clips of one source usually arrive in order, so the cutter keeps the source open and decodes on from where
    the previous clip stopped: every frame is decoded once, not once per clip after a seek. It reopens and seeks
    when the next clip lies behind it, in another source, or further ahead than ``seek_after_s``.
    """

    def __init__(self, storage: Storage, cfg: EncodeConfig, seek_after_s: float = 5.0):
        self.storage, self.cfg, self.seek_after_s = storage, cfg, seek_after_s
        self._uri: str | None = None
        self._session = None  # the open_video context manager
        self._stream = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._next: av.VideoFrame | None = None  # decoded but not yet used: the first frame after the last clip

    def close(self) -> None:
        if self._session is not None:
            self._session.__exit__(None, None, None)
        self._uri = self._session = self._stream = self._frames = self._next = None

    def _position(self) -> int | None:
        return None if self._next is None else self._next.pts

    def _open(self, uri: str, clip: ClipSpec) -> None:
        self.close()
        self._session = open_video(uri, self.storage)
        container, self._stream = self._session.__enter__()
        self._uri = uri
        self._stream.thread_type = "AUTO"
        if clip.start_pts > clip.first_pts:
            container.seek(clip.start_pts, stream=self._stream, backward=True, any_frame=False)
        self._frames = (frame for frame, _ in decoded(container, self._stream))

    def _next_frame(self) -> av.VideoFrame | None:
        # Not a generator over self._frames: leaving a loop would close it, and the next clip needs it open.
        if self._next is not None:
            frame, self._next = self._next, None
            return frame
        return next(self._frames, None)

    def cut(self, uri: str, clip: ClipSpec) -> EncodedClip:
        pos = self._position()
        ahead = self.seek_after_s / float(self._stream.time_base) if self._stream is not None else 0
        if uri != self._uri or pos is None or clip.start_pts < pos or clip.start_pts - pos > ahead:
            self._open(uri, clip)
        encoder = ClipEncoder(self.cfg, clip)
        taken = 0
        try:
            while (frame := self._next_frame()) is not None:
                if frame.pts is None or frame.pts < clip.start_pts:
                    continue
                if (clip.end_pts is not None and frame.pts >= clip.end_pts) or taken >= clip.num_frames:
                    self._next = frame
                    break
                taken += 1
                encoder.add(frame, (frame.pts - clip.start_pts) * Fraction(self._stream.time_base))
        except av.error.FFmpegError as e:
            self.close()  # the decoder's state is unknown: the next clip starts afresh
            if not taken:
                raise VideoError(f"decoding the clip failed ({e})") from None
        except BaseException:
            self.close()
            raise
        if taken < clip.num_frames:
            self.close()
            raise VideoError(f"clip cut short: decoded {taken} of {clip.num_frames} frames")
        return encoder.finish()


def check_encoder(cfg: EncodeConfig) -> None:
    """Encode two small frames with the job's settings: an unknown codec, preset or option fails here, once."""
    encoder = ClipEncoder(cfg, ClipSpec(0, None, 2, 0, 0, Fraction(25)))
    for i in range(2):
        frame = av.VideoFrame(64, 64, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        encoder.add(frame, Fraction(i, 25))
    encoder.finish()


# Without resampling each frame keeps its own time (a variable frame rate source plays as long as it did), on the
# 90 kHz clock of MPEG: exact for every common constant rate.
CLOCK = Fraction(1, 90000)


class ClipEncoder:
    """One clip's H.264 encoder: rotation, resize and, when ``cfg.fps`` is set, resampling to that constant rate
    (otherwise every frame keeps its timestamp)."""

    def __init__(self, cfg: EncodeConfig, clip: ClipSpec):
        self.cfg, self.clip = cfg, clip
        self.rate = Fraction(cfg.fps).limit_denominator(1001) if cfg.fps else clip.source_fps
        self.time_base = 1 / self.rate if cfg.fps else CLOCK
        self.buf = io.BytesIO()
        self.out = av.open(self.buf, mode="w", format="mp4")
        self.stream = None
        self.written = 0
        self.tick = Fraction(0)  # next output time (s) when resampling
        self.prev: av.VideoFrame | None = None

    def add(self, frame: av.VideoFrame, t: Fraction) -> None:
        """Add the source frame shown at ``t`` seconds into the clip."""
        if not self.cfg.fps:
            self._emit(frame, round(t / CLOCK))
            return
        if self.prev is not None:
            while self.tick < t:
                self._emit(self.prev, self.written)
                self.tick += 1 / self.rate
        self.prev = frame

    def _emit(self, frame: av.VideoFrame, pts: int) -> None:
        frame = _upright(frame, self.clip.rotation)
        if self.stream is None:
            self.stream = self.out.add_stream(self.cfg.codec, rate=self.rate)
            self.stream.width, self.stream.height = output_size(frame.width, frame.height, self.cfg.max_short_side)
            self.stream.pix_fmt = "yuv420p"
            self.stream.codec_context.thread_count = self.cfg.threads
            self.stream.options = {"crf": str(self.cfg.crf), "preset": self.cfg.preset}
            self.stream.codec_context.time_base = self.time_base
        if (frame.width, frame.height, frame.format.name) != (self.stream.width, self.stream.height, "yuv420p"):
            frame = frame.reformat(width=self.stream.width, height=self.stream.height, format="yuv420p")
        frame.pts = pts
        frame.time_base = self.time_base
        frame.pict_type = av.video.frame.PictureType.NONE
        self.out.mux(self.stream.encode(frame))
        self.written += 1

    def finish(self) -> EncodedClip:
        if self.cfg.fps and self.prev is not None:
            clip_end = Fraction(self.clip.num_frames) / self.clip.source_fps
            while self.tick < clip_end:
                self._emit(self.prev, self.written)
                self.tick += 1 / self.rate
        self.out.mux(self.stream.encode(None))
        width, height = self.stream.width, self.stream.height
        self.out.close()
        return EncodedClip(self.buf.getvalue(), self.written, width, height, float(self.rate))

"""Clips out of a source: frame-accurate cuts by timestamp (a second decode) and the H.264 (yuv420p) MP4 encode."""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
from av.video.reformatter import ColorRange

from common.storage import Storage

from curation.config import EncodeConfig
from curation.video.colour import BT709, is_bt709, sdr
from curation.video.decode import VideoError, decoded, open_video, upright


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
        self._file = None  # the open source's SourceFile
        self._read: dict[str, int] = {}  # bytes pulled from storage per source, by the sources closed since

    def close(self) -> None:
        if self._session is not None:
            self._read[self._uri] = self._read.get(self._uri, 0) + self._file.bytes_read
            self._session.__exit__(None, None, None)
        self._uri = self._session = self._stream = self._frames = self._next = self._file = None

    def bytes_read(self, uri: str) -> int:
        """What cutting the clips of ``uri`` has read from storage so far; forgets it."""
        open_now = self._file.bytes_read if self._uri == uri else 0
        return self._read.pop(uri, 0) + open_now

    def _position(self) -> int | None:
        return None if self._next is None else self._next.pts

    def _open(self, uri: str, clip: ClipSpec) -> None:
        self.close()
        self._session = open_video(uri, self.storage)
        container, self._stream, self._file = self._session.__enter__()
        self._uri = uri
        if clip.start_pts > clip.first_pts:
            container.seek(clip.start_pts, stream=self._stream, backward=True, any_frame=False)
        self._frames = (sdr(frame) for frame, _ in decoded(container, self._stream))

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


def output_rate(cfg: EncodeConfig, source_fps: Fraction) -> Fraction:
    """The frame rate a clip is encoded at: ``encode.fps`` when set (as a ratio: 29.97 is 30000/1001), else the
    source's."""
    return Fraction(cfg.fps).limit_denominator(1001) if cfg.fps else source_fps


def encoded_frames(times: list[Fraction], clip_end: Fraction, rate: Fraction | None) -> list[int]:
    """Which of a clip's frames (shown at ``times`` seconds into it, in order) each frame of its encode shows: all
    of them without resampling (``rate`` None); resampled to ``rate``, the frame shown at each tick before the
    clip's end (or its last frame, if that comes later), as ``ClipEncoder`` emits them."""
    if rate is None:
        return list(range(len(times)))
    end = max(clip_end, times[-1]) if times else Fraction(0)
    out, j = [], 0
    while Fraction(j) / rate < end:
        out.append(max(0, bisect.bisect_right(times, Fraction(j) / rate) - 1))
        j += 1
    return out


class ClipEncoder:
    """One clip's H.264 encoder: rotation, resize and, when ``cfg.fps`` is set, resampling to that constant rate
    (otherwise every frame keeps its timestamp)."""

    def __init__(self, cfg: EncodeConfig, clip: ClipSpec):
        self.cfg, self.clip = cfg, clip
        self.rate = output_rate(cfg, clip.source_fps)
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
        if self.stream is None:
            self._add_stream(frame)
        frame = upright(frame, self.clip.rotation)
        if (frame.width, frame.height, frame.format.name) != (self.stream.width, self.stream.height, "yuv420p"):
            frame = frame.reformat(width=self.stream.width, height=self.stream.height, format="yuv420p")
        frame.pts = pts
        frame.time_base = self.time_base
        frame.pict_type = av.video.frame.PictureType.NONE
        self.out.mux(self.stream.encode(frame))
        self.written += 1

    def _add_stream(self, frame: av.VideoFrame) -> None:
        """The clip's stream, sized for ``frame`` once upright. Tagged BT.709 when ``frame`` is (a source converted
        to SDR BT.709 by ``colour.sdr``, or one tagged so); other clips stay untagged, as before."""
        turned = self.clip.rotation in (90, 270)
        width, height = (frame.height, frame.width) if turned else (frame.width, frame.height)
        self.stream = self.out.add_stream(self.cfg.codec, rate=self.rate)
        self.stream.width, self.stream.height = output_size(width, height, self.cfg.max_short_side)
        self.stream.pix_fmt = "yuv420p"
        cc = self.stream.codec_context
        cc.thread_count = self.cfg.threads
        self.stream.options = {"crf": str(self.cfg.crf), "preset": self.cfg.preset}
        cc.time_base = self.time_base
        if is_bt709(frame):
            cc.color_primaries = cc.color_trc = cc.colorspace = BT709
            cc.color_range = ColorRange.MPEG

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

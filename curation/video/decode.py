"""Video I/O on PyAV: opening a source (local or remote, through ``curation.video.source_file``), opening it for
the scene pass (probed from its header and first frame, then decoded on), decoding with damage flags, and the frame
pixel operations the other video modules share (upright rotation, yuv420p planes).

The analysis pass is ``curation.video.analysis``; cutting and encoding clips is ``curation.video.encoding``.
"""

from __future__ import annotations

import os
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Iterator, NamedTuple

import av
import numpy as np
from av.stream import Disposition

from common.storage import Storage, is_local

from curation.models.runtime import cpu_threads
from curation.pipeline.faults import SourceError, fault_of
from curation.video.colour import colour_of
from curation.video.source_file import SourceFile


class VideoError(SourceError):
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
    stream_index: int  # the video stream read (``video_stream``)
    video_streams: int  # the video streams it was chosen from (attached pictures not counted)
    color_primaries: str  # as tagged, FFmpeg's names (``colour.colour_of``)
    color_transfer: str
    bit_depth: int


MIN_FPS, MAX_FPS = 0.1, 1000.0  # frame rates a real video stream has (a slide show .. a high-speed camera)

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


class Video(NamedTuple):
    """An open source: its container, the video stream read (``video_stream``) and the file FFmpeg reads."""

    container: av.container.InputContainer
    stream: av.video.stream.VideoStream
    file: SourceFile


@contextmanager
def open_video(uri: str, storage: Storage, hashed: bool = False) -> Iterator[Video]:
    """Open ``uri`` and its video stream (``video_stream``), turning every failure into a VideoError that says why.
    Every source, local or remote, is read through a ``SourceFile`` (with ``hashed``, it hashes what it reads)."""
    if is_local(uri):
        path = uri.removeprefix("file://")
        if os.path.exists(path) and not os.path.isfile(path):  # a fifo would block the open
            raise VideoError(f"not a regular file (a folder, fifo or device): {uri}")
    with ExitStack() as opened:
        try:
            file = opened.enter_context(SourceFile(lambda: storage.open(uri), hashed))
            container = opened.enter_context(av.open(file, mode="r"))
        except FileNotFoundError:
            raise VideoError(f"file not found: {uri}") from None
        except (av.error.FFmpegError, OSError) as e:
            if fault_of(e) != "source":
                raise  # a permission, network or disk problem: not the source's fault (curation.pipeline.faults)
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise VideoError(f"not a readable video container ({reason})") from None
        stream = video_stream(container)
        # The worker's share of the CPU: FFmpeg's own choice is a thread per core of the node for every worker (on
        # two cores, a thread each cost 1% more CPU than one, and more frames held per worker).
        stream.thread_type, stream.codec_context.thread_count = "AUTO", cpu_threads()
        yield Video(container, stream, file)


def _candidates(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """The video streams that may be the video: not an attached picture (cover art, a thumbnail)."""
    return [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The stream a player shows, the same wherever a source is read: never an attached picture; a still (one frame)
    only when nothing moves; then the stream marked default, then the longest; the first of equals."""
    streams = _candidates(container)
    if not streams:
        cover = " (only an attached picture, such as cover art)" if container.streams.video else ""
        raise VideoError(f"the file has no video stream{cover}")
    return max(streams, key=lambda s: (not _still(s), bool(s.disposition & Disposition.default), _seconds(s), -s.index))


def _still(stream: av.video.stream.VideoStream) -> bool:
    return stream.frames == 1 or bool(stream.disposition & Disposition.still_image)


_HMS = re.compile(r"(\d+):(\d+):(\d+(?:\.\d+)?)")


def _seconds(stream: av.video.stream.VideoStream) -> float:
    """How long the stream plays by its header: its duration, Matroska's DURATION tag, or its frame count."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if hms := _HMS.fullmatch(stream.metadata.get("DURATION", "")):
        return int(hms[1]) * 3600 + int(hms[2]) * 60 + float(hms[3])
    rate = stream.average_rate or stream.guessed_rate
    return stream.frames / float(rate) if stream.frames and rate else 0.0


def _rotation(frame: av.VideoFrame) -> int:
    # PyAV reports the display matrix's counter-clockwise angle; turn it into a clockwise fix in 0/90/180/270.
    return int(round(-frame.rotation / 90.0)) % 4 * 90


def i420_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U and V of an even-sized yuv420p frame. Split by size, not by rows: with h/2 odd (160x90) the chroma
    planes do not fill whole rows of the packed array."""
    w, h = frame.width, frame.height
    flat = frame.to_ndarray().ravel()
    c = (w // 2) * (h // 2)
    return flat[: w * h].reshape(h, w), flat[w * h : w * h + c].reshape(h // 2, w // 2), flat[w * h + c :].reshape(h // 2, w // 2)


def upright(frame: av.VideoFrame, rotation: int) -> av.VideoFrame:
    if not rotation:
        return frame
    k = -rotation // 90
    w, h = frame.width, frame.height
    if frame.format.name != "yuv420p" or w % 2 or h % 2:
        rgb = np.rot90(frame.to_ndarray(format="rgb24"), k)
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    # Turn the Y, U and V planes themselves: 2x2 chroma subsampling is symmetric, so no colour conversion is needed.
    y, u, v = i420_planes(frame)
    planes = [np.rot90(p, k).ravel() for p in (y, u, v)]
    out_w = h if rotation in (90, 270) else w
    return av.VideoFrame.from_ndarray(np.concatenate(planes).reshape(-1, out_w), format="yuv420p")


@dataclass
class Source:
    """A source open for the scene pass (``open_source``): what probing it found, and its frames with their damage
    flags (``decoded``), the first one, already decoded, included."""

    video: Video
    info: VideoInfo
    frames: Iterator[tuple[av.VideoFrame, bool]]


@contextmanager
def open_source(uri: str, storage: Storage, max_pixels: int | None = None) -> Iterator[Source]:
    """Open ``uri`` once for the scene pass, hashing what is read: its ``VideoInfo`` from the header and the first
    decoded frame (which proves the stream decodes and gives the rotation), then every frame from that one on, so the
    pass decodes on in the same container. A stream whose header declares more than ``max_pixels`` per frame is
    refused before any frame is decoded (a hostile or broken header must not make a worker allocate gigabytes), and
    so is any decoded frame above it (a stream may change its size midway)."""
    with open_video(uri, storage, hashed=True) as video:
        container, stream = video.container, video.stream
        declared = stream.codec_context.width * stream.codec_context.height
        if max_pixels is not None and declared > max_pixels:
            raise VideoError(f"frame size {stream.codec_context.width}x{stream.codec_context.height} is above the "
                             f"limit of {max_pixels} pixels (max_source_pixels)")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoError("the video stream has no frame rate")
        if not MIN_FPS <= float(rate) <= MAX_FPS:
            raise VideoError(f"the frame rate {float(rate):g} fps is outside {MIN_FPS:g}..{MAX_FPS:g} (a broken header)")
        frames = _held_to(decoded(container, stream), max_pixels)
        try:
            first = next(frames)
        except (StopIteration, av.error.FFmpegError) as e:
            raise VideoError(f"no frame could be decoded ({type(e).__name__}: {e})") from None
        yield Source(video, _info(container, stream, float(rate), first[0]), chain([first], frames))


def _held_to(frames: Iterator[tuple[av.VideoFrame, bool]],
             max_pixels: int | None) -> Iterator[tuple[av.VideoFrame, bool]]:
    for i, (frame, damaged) in enumerate(frames):
        if max_pixels is not None and frame.width * frame.height > max_pixels:
            raise VideoError(f"frame {i} is {frame.width}x{frame.height}, above the limit of {max_pixels} pixels "
                             "(max_source_pixels)")
        yield frame, damaged


def _info(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float,
          first: av.VideoFrame) -> VideoInfo:
    rotation = _rotation(first)
    w, h = first.width, first.height
    if rotation in (90, 270):
        w, h = h, w
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = (container.duration or 0) / av.time_base
    frames = stream.frames or int(round(duration * fps))
    return VideoInfo(w, h, fps, duration, frames, rotation, stream.codec_context.name, stream.index,
                     len(_candidates(container)), **colour_of(first))

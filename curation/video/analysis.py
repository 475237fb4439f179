"""The one decode pass of a source, in the container opened to probe it (``decode.open_source``): shot detection
and per-frame scores at analysis size, every full-size frame handed on to a sink that encodes clips from them
(``curation.video.one_pass``). HDR and wide-gamut frames are converted to SDR BT.709 first
(``curation.video.colour``), so the detectors and the luma, contrast and blank scores see the frames the clips
hold, not washed-out ones.

Frames are identified by their presentation timestamp (pts) recorded here, so cuts stay exact for variable frame
rate sources and for streams whose first timestamp is not 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import cv2
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from curation.dedup.signals import frame_hash
from curation.video.colour import sdr
from curation.video.decode import Source, VideoError
from curation.video.planning import Scores
from curation.video.shots import Break, Detector

# A gap between two frames longer than this is a broken timeline (a damaged or spliced stream), not a frame shown
# that long: it is a break no clip crosses, and the time it skips is not counted.
JUMP_S = 10.0


@dataclass
class Analysis:
    pts: np.ndarray  # int64, one per decoded frame, in presentation order: where to find the frames again
    time_base: Fraction
    breaks: list[Break]  # every detector's breaks, in order, not yet merged (``planning.merge_breaks``)
    scores: Scores  # per frame, at analysis size
    timeline: np.ndarray  # pts with every timestamp jump (JUMP_S) closed up to one frame step: what time is
    hashes: np.ndarray  # uint64 per frame: its DCT sign hash (``curation.dedup.signals``), for clip fingerprints

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


# swscale's area scaling, bit-exact (the same pixels on every CPU). Scaling to BGR in the same call would be a little
# faster, but its dither pattern, in the dark frames of a fade, changes hue enough for adaptive to report cuts.
_SCALING = Interpolation.AREA | Interpolation.BITEXACT | Interpolation.ACCURATE_RND


def _small_bgr(reformatter: VideoReformatter, frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """BGR pixels area-resized to ``size`` (even sides): swscale scales the Y, U and V planes on one thread (the
    workers fill the cores) and only the small frame is converted. On 720p frames, the same pixels as OpenCV's area
    resize of each plane in half its time; ~3x cheaper than converting at full size, and on every test and benchmark
    video the detectors give the same cuts (averaging commutes with the linear colour conversion)."""
    small = reformatter.reformat(frame, width=size[0], height=size[1], format="yuv420p", interpolation=_SCALING,
                                 threads=1)
    return cv2.cvtColor(small.to_ndarray(), cv2.COLOR_YUV2BGR_I420)


class FrameSink(Protocol):
    """Sees every frame the analysis pass decodes, with the breaks released at it (``one_pass``)."""

    def add(self, index: int, frame: av.VideoFrame, pts: int, scores: tuple[float, ...], breaks: list[Break],
            settled: int) -> None: ...

    def finish(self, num_frames: int, breaks: list[Break]) -> None: ...


def analyse(source: Source, detectors: list[Detector], analysis_width: int, sink: FrameSink | None = None) -> Analysis:
    """Decode every frame of ``source`` once at reduced size, from its first (``decode.open_source``): feed the shot
    detectors, score each frame (motion, luma, contrast, damaged) and hash it. ``sink`` gets each full-size frame as well, so
    clips can be encoded in this same pass, and the breaks in order of their start: a break is released once every
    detector has settled past its start."""
    pts: list[int] = []
    scores: list[tuple[float, ...]] = []
    hashes: list[int] = []
    pending: list[Break] = []
    released: list[Break] = []
    prev = None
    time_base = Fraction(source.video.stream.time_base)
    jump = JUMP_S / float(time_base)
    size = None
    reformatter = VideoReformatter()  # keeps its swscale context between frames of one size
    turns = -source.info.rotation // 90  # np.rot90 turns counter-clockwise; the rotation is clockwise
    try:
        for i, (frame, damaged) in enumerate(source.frames):
            frame = sdr(frame)  # scores, cuts and held clips see what the clips will show
            if size is None:
                scale = min(1.0, analysis_width / frame.width)
                size = (max(2, round(frame.width * scale / 2) * 2), max(2, round(frame.height * scale / 2) * 2))
            pts.append(frame.pts if frame.pts is not None else (pts[-1] + 1 if pts else 0))
            if i and pts[-1] - pts[-2] > jump:
                pending.append(Break(i, i + 1))  # a span, which no merge rule drops: no clip crosses a jump
            small = _small_bgr(reformatter, frame, size)
            gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            mean, std = cv2.meanStdDev(gray)
            motion = 0.0 if prev is None else float(cv2.absdiff(gray, prev).mean())
            scores.append((motion, float(mean[0, 0]), float(std[0, 0]), float(damaged)))
            hashes.append(frame_hash(np.rot90(gray, turns)))  # upright, as the clip shows it
            prev = gray
            pending += [b for d in detectors for b in d.process(i, small)]
            settled = min((d.settled() for d in detectors), default=i + 1)
            ready = sorted(b for b in pending if b.start < settled)
            if ready:
                pending = [b for b in pending if b.start >= settled]
                released += ready
            if sink is not None:
                sink.add(i, frame, pts[-1], scores[-1], ready, settled)
    except av.error.FFmpegError:
        if not pts:  # the first frame, decoded when the source was opened, could not be converted
            raise
        # A damaged tail: keep the frames decoded so far, as players do.
    last = sorted(pending + [b for d in detectors for b in d.finish(len(pts))])
    if sink is not None:
        sink.finish(len(pts), last)
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
        hashes=np.asarray(hashes, dtype=np.uint64),
    )

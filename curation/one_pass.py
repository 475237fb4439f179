"""Encode clips from the scene pass's own decoded frames, so most clips need no second decode of their source.

``video.analyse`` hands every decoded frame, and the cuts its detectors report at it, to a ``OnePassEncoder``.
It holds the frames of the open scene, up to ``max_bytes``. When a cut closes the scene, it plans the scene's
clips with ``plan_clips`` (a scene longer than the longest clip is split evenly, which needs its length: hence
holding), encodes those the filters keep from the held frames and appends the MP4s to an anonymous spill file, so
memory stays bounded and nothing is left behind if the worker dies.

It only guesses the plan: it accepts cuts as they come by the rule ``merge_cuts`` applies at the end. The scene
stage takes a held clip only where the final plan has exactly that clip. The rest is cut from the source in a
second decode (``ClipCutter``): a scene too big to hold, a scene a second detector cuts late.
"""

from __future__ import annotations

import tempfile
from collections import deque
from fractions import Fraction
from typing import Callable

import av
import numpy as np

from .config import EncodeConfig
from .video import ClipEncoder, ClipSpec, EncodedClip, clip_motion, plan_clips

# While the open scene is not held whole, its last frames are still kept, so that the next scene can be held
# when its cut is reported this many frames late (PySceneDetect's adaptive detector reports 2 frames late).
LATE_FRAMES = 16


def _nbytes(frame: av.VideoFrame) -> int:
    return sum(p.buffer_size for p in frame.planes)


class OnePassEncoder:
    def __init__(self, cfg: EncodeConfig, rotation: int, source_fps: Fraction, clip_s: tuple[float, float],
                 min_gap: int, max_bytes: int, keep: Callable[[float], bool]):
        self.cfg, self.rotation, self.source_fps, self.clip_s = cfg, rotation, source_fps, clip_s
        self.min_gap, self.max_bytes, self.keep = min_gap, max_bytes, keep
        self.frames: deque[tuple[int, int, av.VideoFrame]] = deque()  # (index, pts, frame) from the open scene
        self.bytes = 0
        self.start = 0  # first frame of the open scene
        self.whole = True  # every frame of the open scene is held
        self.last_cut = 0
        self.motion: list[float] = []
        self.spill = tempfile.TemporaryFile()
        self.held: dict[tuple[int, int], tuple[int, int, EncodedClip]] = {}  # (start, end) -> offset, size, clip sans mp4

    def add(self, index: int, frame: av.VideoFrame, pts: int, motion: float, cuts: list[int]) -> None:
        self.motion.append(motion)
        self.frames.append((index, pts, frame))
        self.bytes += _nbytes(frame)
        for c in sorted(cuts):
            self._cut(c)
        if self.whole and self.bytes > self.max_bytes:
            self.whole = False  # too big to hold
        while not self.whole and (len(self.frames) > LATE_FRAMES or self.bytes > self.max_bytes):
            self._pop()

    def finish(self, num_frames: int, cuts: list[int]) -> None:
        for c in sorted(cuts):
            if c < num_frames:
                self._cut(c)
        self._close(num_frames)
        self.frames.clear()

    def take(self, start: int, end: int) -> EncodedClip | None:
        """The clip of frames [start, end) if it was encoded in the pass."""
        if (start, end) not in self.held:
            return None
        offset, size, clip = self.held.pop((start, end))
        self.spill.seek(offset)
        clip.mp4 = self.spill.read(size)
        return clip

    def close(self) -> None:
        self.frames.clear()
        self.spill.close()

    def _pop(self) -> None:
        self.bytes -= _nbytes(self.frames.popleft()[2])

    def _cut(self, c: int) -> None:
        if c - self.last_cut < self.min_gap:  # merge_cuts' rule; also skips a cut reported behind an accepted one
            return
        self.last_cut = c
        self._close(c)

    def _close(self, end: int) -> None:
        scene = []
        while self.frames and self.frames[0][0] < end:
            scene.append(self.frames[0])
            self._pop()
        if self.whole and len(scene) == end - self.start:
            for a, b in plan_clips(len(scene), [], float(self.source_fps), *self.clip_s):
                self._encode(self.start + a, self.start + b, scene[a:b])
        self.start = end
        self.whole = not self.frames or self.frames[0][0] == end

    def _encode(self, start: int, end: int, scene: list[tuple[int, int, av.VideoFrame]]) -> None:
        n = end - start
        if not self.keep(clip_motion(np.asarray(self.motion[start:end], dtype=np.float32), 0, n)):
            return
        first = scene[0][1]
        spec = ClipSpec(first, None, n, first, self.rotation, self.source_fps)
        try:
            encoder = ClipEncoder(self.cfg, spec)
            for _, pts, frame in scene:
                encoder.add(frame, (pts - first) * Fraction(frame.time_base))
            clip = encoder.finish()
        except (av.error.FFmpegError, ValueError):
            return  # the second decode cuts this clip again and reports what goes wrong
        self.spill.seek(0, 2)
        self.held[(start, end)] = (self.spill.tell(), len(clip.mp4), clip)
        self.spill.write(clip.mp4)
        clip.mp4 = b""

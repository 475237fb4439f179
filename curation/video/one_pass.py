"""Encode clips from the scene pass's own decoded frames, so most clips need no second decode of their source.

``analysis.analyse`` hands every decoded frame, its scores and the breaks released at it to a ``OnePassEncoder``.
It holds the frames of the open scene, up to ``max_bytes``. When a break closes the scene, it plans the scene with
the source's ``planning.Planner`` (trimming needs the whole scene's scores, splitting a long scene evenly its
length: hence holding), encodes the clips the plan keeps from the held frames and appends the MP4s to an anonymous
spill file, so memory stays bounded and nothing is left behind if the worker dies. With the text filter on
(``text``), each clip's text is measured on the held frames first, and a clip the filter drops is not encoded.

It accepts breaks as they come by the rule the final plan applies (``planning.BreakMerger``), so the two agree
when breaks arrive in order, as ``analyse`` releases them. The scene stage still takes a held clip only where the final
plan has exactly that clip; the rest is cut from the source in a second decode (``ClipCutter``): a scene too big
to hold, a scene a detector broke later than it had settled.
"""

from __future__ import annotations

import tempfile
from collections import deque
from fractions import Fraction

import av

from curation.config import EncodeConfig
from curation.models.text_detection import TextCheck
from curation.video.decode import upright
from curation.video.encoding import (ClipEncoder, ClipSpec, EncodedClip, encoded_frames, output_rate,
                                     output_size)
from curation.video.planning import BreakMerger, Planner, Scores
from curation.video.shots import Break


def _nbytes(frame: av.VideoFrame) -> int:
    return sum(p.buffer_size for p in frame.planes)


class OnePassEncoder:
    def __init__(self, cfg: EncodeConfig, rotation: int, source_fps: Fraction, planner: Planner, max_bytes: int,
                 text: TextCheck | None = None):
        self.cfg, self.rotation, self.source_fps, self.planner, self.max_bytes = cfg, rotation, source_fps, planner, max_bytes
        self.text = text
        self.texts: dict[tuple[int, int], dict] = {}  # (start, end) -> the clip's text scores, measured here
        self.merger = BreakMerger(planner.min_gap)
        self.frames: deque[tuple[int, int, av.VideoFrame]] = deque()  # (index, pts, frame) from the open scene
        self.bytes = 0
        self.next_index = 0  # the index of the next frame to come
        self.start = 0  # first frame of the open scene
        self.whole = True  # every frame of the open scene is held
        self.scores: list[tuple[float, ...]] = []  # (motion, luma, contrast, damaged) per frame so far
        self.spill = tempfile.TemporaryFile()
        self.held: dict[tuple[int, int], tuple[int, int, EncodedClip]] = {}  # (start, end) -> offset, size, clip sans mp4

    def add(self, index: int, frame: av.VideoFrame, pts: int, scores: tuple[float, ...], breaks: list[Break],
            settled: int) -> None:
        self.scores.append(scores)
        self.next_index = index + 1
        if index >= self.start:  # not inside a transition already reported
            self.frames.append((index, pts, frame))
            self.bytes += _nbytes(frame)
        for b in breaks:
            self._break(b)
        if self.whole and self.bytes > self.max_bytes:
            self.whole = False  # too big to hold
        # A scene that is not held whole is cut in the second decode; keep only frames a later scene may start at.
        while not self.whole and self.frames and (self.frames[0][0] < settled or self.bytes > self.max_bytes):
            self._pop()

    def finish(self, num_frames: int, breaks: list[Break]) -> None:
        for b in breaks:
            self._break(b)
        self._close(num_frames)
        self.frames.clear()

    def text_scores(self, start: int, end: int) -> dict | None:
        """The text scores of the clip of frames [start, end) if they were measured in the pass (a clip they drop
        was not encoded)."""
        return self.texts.pop((start, end), None)

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

    def _break(self, b: Break) -> None:
        kept = len(self.merger.kept)
        accepted = self.merger.add(b)
        if accepted is None:
            return
        if len(self.merger.kept) > kept:  # a new break closes the open scene; an extended one only moves its start
            self._close(accepted.start)
        while self.frames and self.frames[0][0] < accepted.end:  # a transition's frames belong to no scene
            self._pop()
        self._open(max(self.start, accepted.end))

    def _close(self, end: int) -> None:
        scene = []
        while self.frames and self.frames[0][0] < end:
            scene.append(self.frames[0])
            self._pop()
        if end > self.start and self.whole and len(scene) == end - self.start:
            for c in self.planner.scene(0, end - self.start, Scores.of(self.scores[self.start : end])):
                if c.dropped_by is None:
                    self._encode(self.start + c.start, self.start + c.end, scene[c.start : c.end])
        self._open(end)

    def _open(self, start: int) -> None:
        """The next scene starts at ``start``: it is held whole if its first frame is held or still to come."""
        self.start = start
        self.whole = self.frames[0][0] == start if self.frames else self.next_index <= start

    def _encode(self, start: int, end: int, scene: list[tuple[int, int, av.VideoFrame]]) -> None:
        first = scene[0][1]
        if self.text is not None:
            scores = self._text(scene)
            if scores is not None:
                self.texts[(start, end)] = scores
                if not self.text.keeps(scores):
                    return
        spec = ClipSpec(first, None, end - start, first, self.rotation, self.source_fps)
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

    def _text(self, scene: list[tuple[int, int, av.VideoFrame]]) -> dict | None:
        """The text scores of the clip ``scene`` holds, on the frames its encode will show (upright, at its size)."""
        first = scene[0][1]
        times = [(pts - first) * Fraction(frame.time_base) for _, pts, frame in scene]
        rate = output_rate(self.cfg, self.source_fps)
        shown = encoded_frames(times, len(scene) / self.source_fps, rate if self.cfg.fps else None)
        frames = [upright(scene[shown[i]][2], self.rotation) for i in self.text.picks(float(rate), len(shown))]
        width, height = output_size(frames[0].width, frames[0].height, self.cfg.max_short_side)
        try:
            return self.text.measure([f.to_ndarray(width=width, height=height, format="rgb24") for f in frames])
        except Exception:  # noqa: BLE001 - whatever the detector raised: the text stage measures the clip again
            return None  # from its MP4 and makes what goes wrong that clip's error row

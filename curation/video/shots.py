"""Shot boundaries: what the detectors report as frames go by (how reports merge is ``curation.video.planning``).

A ``Break`` ends a shot at ``start`` and begins the next at ``end``. A hard cut is a point (start == end); a
gradual transition (a dissolve, a fade) is a span whose frames belong to neither shot, so no clip includes them.

Detectors see each analysis frame once (``process``) and may report a break late. Each says how far it has
``settled``: it will report no more breaks that start before that frame, which lets the analysis pass hand breaks
on in order (``curation.video.one_pass`` encodes clips as their scene closes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect import detectors as sd

# PySceneDetect's detectors report a cut a few frames late (adaptive: 2); this bounds how late we assume.
SCENEDETECT_LAG = 16


class _HsvScore:
    """ContentDetector's frame score, the weighted mean absolute difference of the frame's H, S and V from the
    previous frame's, summed by OpenCV over the three channels at once: the same numbers as the library's numpy per
    channel (integer sums, exact in float64) in a quarter of its time. Scores with edges (an edge weight, or a stats
    manager) take the library's own path."""

    _last_hsv: np.ndarray | None = None

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: np.ndarray) -> float:
        if self._weights.delta_edges > 0.0 or self.stats_manager is not None:
            return super()._calculate_frame_score(timecode, frame_img)
        hsv = cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV)
        last, self._last_hsv = self._last_hsv, hsv
        if last is None:
            return 0.0
        sums = cv2.sumElems(cv2.absdiff(hsv, last))
        pixels = float(hsv.shape[0] * hsv.shape[1])
        components = (sums[0] / pixels, sums[1] / pixels, sums[2] / pixels, 0.0)  # hue, sat, lum, edges
        return sum(c * w for c, w in zip(components, self._weights, strict=True)) / sum(abs(w) for w in self._weights)


class _Adaptive(_HsvScore, sd.AdaptiveDetector):
    pass


class _Content(_HsvScore, sd.ContentDetector):
    pass


SCENEDETECT_KINDS = {
    "adaptive": _Adaptive,
    "content": _Content,
    "threshold": sd.ThresholdDetector,
    "histogram": sd.HistogramDetector,
    "hash": sd.HashDetector,
}


@dataclass(frozen=True, order=True)
class Break:
    start: int  # first frame not in the previous shot
    end: int  # first frame of the next shot (== start for a hard cut)


class Detector(Protocol):
    def process(self, index: int, small_bgr: np.ndarray) -> list[Break]: ...

    def finish(self, num_frames: int) -> list[Break]: ...

    def settled(self) -> int: ...


class SceneDetectDetector:
    """A PySceneDetect detector fed the analysis frames; its cuts become point breaks."""

    def __init__(self, kind: str, args: dict, fps: float):
        try:
            self.detector = SCENEDETECT_KINDS[kind](**args)
        except TypeError as e:
            raise ValueError(f"scenes.detectors: the arguments {args} do not fit the {kind} detector: {e}") from None
        self.fps = fps
        self.seen = 0

    def process(self, index: int, small_bgr: np.ndarray) -> list[Break]:
        self.seen = index + 1
        return [Break(int(c.frame_num), int(c.frame_num)) for c in self.detector.process_frame(FrameTimecode(index, self.fps), small_bgr)]

    def finish(self, num_frames: int) -> list[Break]:
        self.seen = None
        return [Break(int(c.frame_num), int(c.frame_num)) for c in self.detector.post_process(FrameTimecode(num_frames, self.fps))]

    def settled(self) -> int:
        return self.seen - SCENEDETECT_LAG if self.seen is not None else 1 << 62

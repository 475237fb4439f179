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

import numpy as np
from scenedetect import FrameTimecode
from scenedetect import detectors as sd

# PySceneDetect's detectors report a cut a few frames late (adaptive: 2); this bounds how late we assume.
SCENEDETECT_LAG = 16

SCENEDETECT_KINDS = {
    "adaptive": sd.AdaptiveDetector,
    "content": sd.ContentDetector,
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

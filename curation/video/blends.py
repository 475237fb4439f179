"""Where a gradual transition may be: the cheap test that decides where TransNetV2 runs beside a hard-cut detector.

A dissolve or a fade makes each frame a blend of the frames before and after it: the frame lies close to their
average while they differ a lot. Motion does not (a moving edge is in one place, not half in two), nor does a
hard cut (the frame equals one side), nor a still shot (nothing differs). On the labelled real videos this flags
every frame of every gradual transition the network finds, and 3% of a music video full of cuts and handheld
motion (benchmarks/clean_clips.py measures it).
"""

from __future__ import annotations

import numpy as np

SPAN = 8  # frames before and after the frame that it is compared with
MIN_CHANGE = 6.0  # mean absolute difference (0..255) between those two frames below which nothing is changing
MAX_RESIDUAL = 0.3  # the frame's mean distance from their average, as a share of that difference, for a blend
MARGIN = 10  # frames either side of a blend-like frame that the network predicts: a transition outlasts its middle


def looks_blended(before: np.ndarray, frame: np.ndarray, after: np.ndarray) -> bool:
    """Whether ``frame`` is a blend of ``before`` and ``after`` (uint8 images of one size) that differ."""
    a, f, b = (x.astype(np.float32) for x in (before, frame, after))
    change = float(np.abs(b - a).mean())
    return change >= MIN_CHANGE and float(np.abs(f - (a + b) / 2).mean()) <= MAX_RESIDUAL * change

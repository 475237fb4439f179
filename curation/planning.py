"""From shot boundaries and per-frame scores to clips: what of each scene is content, and how it is cut.

Every scene (the frames between two merged breaks, ``curation.shots``) is trimmed: black, white and flat frames,
and the frames of a fade, are left out at both ends. What remains is split evenly into clips no longer than the
longest clip. A scene with no clip's worth of content left is planned as one ``blank`` candidate, which the scene
stage records as a dropped row. The one-pass encoder plans each scene with the same function as it closes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import TrimConfig


@dataclass
class Scores:
    """Per-frame scores of the analysis pass, at analysis size: all float32 arrays of one length."""

    motion: np.ndarray  # mean |gray[i] - gray[i-1]| (0 for frame 0)
    luma: np.ndarray  # mean gray level, 0..255
    contrast: np.ndarray  # standard deviation of the gray levels
    damaged: np.ndarray  # 1 where the decoder reported damage (``video.decoded``), else 0

    @classmethod
    def of(cls, frames: list[tuple[float, float, float, float]]) -> "Scores":
        """From (motion, luma, contrast, damaged) per frame, as the analysis pass records them."""
        return cls(*np.asarray(frames, dtype=np.float32).reshape(-1, 4).T)


@dataclass
class Planned:
    start: int
    end: int  # exclusive
    blank: bool  # no content: a dropped candidate, never encoded


def blank_frames(luma: np.ndarray, contrast: np.ndarray, trim: TrimConfig) -> np.ndarray:
    return (luma < trim.black_luma) | (luma > trim.white_luma) | (contrast < trim.flat_contrast)


def content_range(luma: np.ndarray, contrast: np.ndarray, trim: TrimConfig) -> tuple[int, int]:
    """The frames of a scene left once blank and fading frames are trimmed from both ends (empty: (0, 0))."""
    keep = ~blank_frames(luma, contrast, trim)
    if not keep.any():
        return 0, 0
    # A fade scales contrast towards 0 (to black, to white, to any flat colour): compare with the scene's content.
    keep &= contrast >= trim.fade_ratio * float(np.median(contrast[keep]))
    if not keep.any():
        return 0, 0
    idx = np.flatnonzero(keep)
    return int(idx[0]), int(idx[-1]) + 1


def frame_limits(fps: float, min_s: float, max_s: float) -> tuple[int, int]:
    min_len = max(1, math.ceil(min_s * fps - 1e-6))
    return min_len, max(min_len, math.floor(max_s * fps + 1e-6))


def split_evenly(start: int, end: int, min_len: int, max_len: int) -> list[tuple[int, int]]:
    """[start, end) in equal parts no longer than ``max_len``; nothing if shorter than ``min_len``."""
    length = end - start
    if length < min_len:
        return []
    parts = math.ceil(length / max_len)
    edges = [start + round(k * length / parts) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b - a >= min_len]


def plan_scene(start: int, end: int, scores: Scores, trim: TrimConfig, limits: tuple[int, int]) -> list[Planned]:
    a, b = content_range(scores.luma[start:end], scores.contrast[start:end], trim)
    clips = [Planned(s, e, False) for s, e in split_evenly(start + a, start + b, *limits)]
    if not clips and end - start >= limits[0]:
        return [Planned(start, end, True)]
    return clips


def plan(scenes: list[tuple[int, int]], scores: Scores, trim: TrimConfig, limits: tuple[int, int]) -> list[Planned]:
    return [p for s, e in scenes for p in plan_scene(s, e, scores, trim, limits)]


def clip_scores(scores: Scores, start: int, end: int, trim: TrimConfig) -> dict[str, float]:
    """The manifest's scores of frames [start, end): kept for every clip, so users can re-threshold."""
    luma, contrast = scores.luma[start:end], scores.contrast[start:end]
    inner = scores.motion[start + 1 : end]  # the difference across the first frame belongs to the cut
    return {
        "motion": float(inner.mean()) if len(inner) else 0.0,
        "blank_frac": float(blank_frames(luma, contrast, trim).mean()),
        "luma": float(luma.mean()),
        "contrast": float(contrast.mean()),
        "damaged_frames": int(scores.damaged[start:end].sum()),
    }

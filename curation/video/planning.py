"""The one planner of a source's clips, from the detectors' breaks and the per-frame scores.

Breaks merge into scenes by one rule (``BreakMerger``). Every scene (the frames between two merged breaks) is
trimmed: black, white and flat frames, and the frames of a fade, are left out at both ends. What remains is split
evenly into clips no longer than the longest clip, and with the training window's limits each part is cut to
the longest window it holds, from its middle (``clip_window``). A scene with no clip's worth of content left is planned as one
``blank`` candidate; the filters (``rejection``) drop the clips whose scores fail them. ``Planner`` applies all of
it, online in the scene pass's encoder as each scene closes (``curation.video.one_pass``) and offline to the whole
analysis (the scene stage's final plan): the same decisions either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.contract import TRAINING_WINDOW, window_frames

from curation.config import FiltersConfig, ScenesConfig, TrimConfig
from curation.video.shots import Break


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


def clip_limits(sc: ScenesConfig, fps: float, encode_fps: float | None = None) -> tuple[int, int]:
    """(shortest, longest) clip in source frames at ``fps``: ``scenes.min_clip_s`` and ``max_clip_s`` where set,
    else the training window's shortest and longest span at the frame rate the clip is encoded at. A clip resampled
    to ``encode_fps`` gets one source frame more than the window needs, so rounding in the resampler never leaves
    it a frame short."""
    out = encode_fps or fps
    per_out = fps / out  # source frames per encoded frame
    lo = (max(1, math.ceil(sc.min_clip_s * fps - 1e-6)) if sc.min_clip_s is not None
          else math.ceil(TRAINING_WINDOW.shortest_clip(out) * per_out - 1e-6) + (out != fps))
    hi = (math.floor(sc.max_clip_s * fps + 1e-6) if sc.max_clip_s is not None
          else math.floor(TRAINING_WINDOW.longest_clip(out) * per_out + 1e-6))
    return lo, max(lo, hi)


def clip_window(sc: ScenesConfig, fps: float, encode_fps: float | None = None) -> Callable[[int], int] | None:
    """With the training window's limits (``min_clip_s`` and ``max_clip_s`` unset) and no resampling: a part's
    length -> the frames a clip keeps of it, the span of the longest window it holds, so that every frame kept is a
    frame trained on and the caption describes the whole clip. None otherwise: parts are kept whole."""
    if sc.min_clip_s is not None or sc.max_clip_s is not None or (encode_fps and encode_fps != fps):
        return None
    return lambda length: window_frames(fps, length)


def split_evenly(start: int, end: int, min_len: int, max_len: int) -> list[tuple[int, int]]:
    """[start, end) in equal parts no longer than ``max_len``; nothing if shorter than ``min_len``."""
    length = end - start
    if length < min_len:
        return []
    parts = math.ceil(length / max_len)
    edges = [start + round(k * length / parts) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b - a >= min_len]


def centred(start: int, end: int, length: int) -> tuple[int, int]:
    """``length`` frames from the middle of [start, end): what is left out lies at the cuts, where a missed
    transition frame would sit."""
    a = start + (end - start - length) // 2
    return a, a + length


def plan_scene(start: int, end: int, scores: Scores, trim: TrimConfig, limits: tuple[int, int],
               window: Callable[[int], int] | None = None) -> list[Planned]:
    """The scene's clips: its content (blank and fading ends trimmed) split evenly within ``limits``, each part cut
    to its ``window`` (``clip_window``) where given."""
    a, b = content_range(scores.luma[start:end], scores.contrast[start:end], trim)
    parts = split_evenly(start + a, start + b, *limits)
    if window is not None:
        parts = [centred(s, e, window(e - s)) for s, e in parts]
    clips = [Planned(s, e, False) for s, e in parts]
    if not clips and end - start >= limits[0]:
        return [Planned(start, end, True)]
    return clips


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


def rejection(meta: dict, f: FiltersConfig) -> str | None:
    """Why a clip is rejected, or None to keep it. The scene pass asks too, so it never encodes a reject."""
    if meta["width"] < f.min_width or meta["height"] < f.min_height:
        return "resolution"
    if meta["motion"] < f.min_motion or (f.max_motion is not None and meta["motion"] > f.max_motion):
        return "motion"
    if meta["blank_frac"] > f.max_blank_frac:
        return "blank"
    if f.max_damaged_frames is not None and meta["damaged_frames"] > f.max_damaged_frames:
        return "damaged"
    return None


class BreakMerger:
    """Combines breaks given in order of ``start``: overlapping or touching breaks become one; a hard cut closer
    than ``min_gap`` frames to the previous break (or to the start) is ignored, as PySceneDetect's min_scene_len.
    Spans are always kept: their frames are transitions whatever their neighbours. The final plan and the online
    encoder both apply this rule, so they agree whenever breaks arrive in order."""

    def __init__(self, min_gap: int):
        self.min_gap = min_gap
        self.kept: list[Break] = []

    @property
    def last_end(self) -> int:
        return self.kept[-1].end if self.kept else 0

    def add(self, b: Break) -> Break | None:
        """The break as accepted (a kept one it extends, or a new one), or None when it changes nothing."""
        if self.kept and b.start <= self.last_end:
            if b.end <= self.last_end:
                return None
            self.kept[-1] = Break(self.kept[-1].start, b.end)
            return self.kept[-1]
        if b.start == b.end and b.start - self.last_end < self.min_gap:
            return None
        self.kept.append(b)
        return b


def merge_breaks(breaks: list[Break], num_frames: int, min_gap: int) -> list[Break]:
    merger = BreakMerger(min_gap)
    for b in sorted(breaks):
        if b.start < num_frames:
            merger.add(Break(b.start, min(b.end, num_frames)))
    return merger.kept


def scenes(breaks: list[Break], num_frames: int) -> list[tuple[int, int]]:
    """The shots between merged breaks, as [start, end) frame ranges (empty ones left out)."""
    bounds = [0] + [x for b in breaks for x in (b.start, b.end)] + [num_frames]
    return [(a, b) for a, b in zip(bounds[::2], bounds[1::2]) if b > a]


def min_gap_frames(min_scene_s: float, fps: float) -> int:
    return max(1, round(min_scene_s * fps))


@dataclass
class PlannedClip:
    start: int
    end: int  # exclusive
    scores: dict[str, float]  # the manifest's scores (``clip_scores``)
    dropped_by: str | None  # "blank" or the filter that rejects it; None: a clip to encode


class Planner:
    """Every decision about one source's clips: how breaks merge, how scenes are trimmed and split, which clips the
    filters drop. The source's size is what the resolution filter sees."""

    def __init__(self, trim: TrimConfig, limits: tuple[int, int], min_gap: int, filters: FiltersConfig,
                 width: int, height: int, window: Callable[[int], int] | None = None):
        self.trim, self.limits, self.min_gap, self.filters, self.window = trim, limits, min_gap, filters, window
        self.size = {"width": width, "height": height}

    def scene(self, start: int, end: int, scores: Scores) -> list[PlannedClip]:
        clips = []
        for p in plan_scene(start, end, scores, self.trim, self.limits, self.window):
            s = clip_scores(scores, p.start, p.end, self.trim)
            why = "blank" if p.blank else rejection({**self.size, **s}, self.filters)
            clips.append(PlannedClip(p.start, p.end, s, why))
        return clips

    def source(self, breaks: list[Break], num_frames: int, scores: Scores) -> list[list[PlannedClip]]:
        """The clips of each scene of a whole source (an empty list: a scene shorter than the shortest clip)."""
        return [self.scene(s, e, scores) for s, e in scenes(merge_breaks(breaks, num_frames, self.min_gap), num_frames)]

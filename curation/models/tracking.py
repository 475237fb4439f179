"""Subjects followed through the frames of a clip: detections of one frame associated with those of the frames
before it, and what each sighting is worth as a reference (size, how much the frame border cuts, sharpness,
occlusion by the other subjects, detector score).

Detection + association rather than a video segmenter's propagation (SAM 2): the frames looked at are seconds
apart, where a propagated mask drifts, and every frame is detected anyway to find subjects the keyframe misses;
each association is a label match plus box overlap, centre distance and colour (a hue-saturation histogram under
the mask), solved per frame as an assignment. Colour keeps two subjects of one label apart where they cross, and
follows one that moved further than ``max_shift`` between the frames looked at when it looks the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from curation.models.masks import bbox
from curation.models.subjects import Subject


@dataclass
class Sighting:
    """One subject in one frame."""

    frame: int  # clip frame index
    subject: Subject
    box: tuple[int, int, int, int]
    border_cut: float
    sharpness: float
    colour: np.ndarray  # hue-saturation histogram under the mask, normalised (``colours``)
    occluded: float = 0.0

    @property
    def area(self) -> int:
        return self.subject.area

    @property
    def score(self) -> float:
        return self.subject.score


@dataclass
class Track:
    label: str
    sightings: list[Sighting] = field(default_factory=list)

    @property
    def last(self) -> Sighting:
        return self.sightings[-1]

    def at(self, frame: int) -> Sighting | None:
        return next((s for s in self.sightings if s.frame == frame), None)


def border_cut(mask: np.ndarray) -> float:
    """The share of the mask's outline lying on the frame border: 0 for a subject wholly inside the frame, about
    the share of its outline the border cuts off otherwise."""
    m = mask.astype(np.uint8)
    inner = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    outline = np.count_nonzero(m) - np.count_nonzero(inner)  # pixels on the frame border count as outline
    if not outline:
        return 0.0
    on_border = (np.count_nonzero(mask[0]) + np.count_nonzero(mask[-1]) + np.count_nonzero(mask[1:-1, 0])
                 + np.count_nonzero(mask[1:-1, -1]))
    return on_border / outline


def sharpness(gray: np.ndarray, mask: np.ndarray) -> float:
    """Variance of the Laplacian inside the mask, away from its edge (where the cut-out edge itself would count)."""
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    values = lap[inner] if np.count_nonzero(inner) >= 16 else lap[mask]
    return float(values.var()) if values.size else 0.0


def occlusion(mask: np.ndarray, others: np.ndarray) -> float:
    """How much of a subject other subjects hide: the larger of the share of its box their masks cover (one in
    front, across it) and the share of its outline that touches them (one in front, beside its visible part,
    which lies outside its box)."""
    x0, y0, x1, y1 = bbox(mask)
    inside = float((others[y0:y1, x0:x1] & ~mask[y0:y1, x0:x1]).mean())
    m = mask.astype(np.uint8)
    outline = m.astype(bool) & ~cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool)
    near = cv2.dilate(others.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    touching = np.count_nonzero(outline & near) / max(1, np.count_nonzero(outline))
    return max(inside, touching)


HUE_BINS, SAT_BINS = 12, 4
SAME_LOOK = 0.75  # colour similarity at which a subject that moved beyond max_shift is still followed


def colours(hsv: np.ndarray, mask: np.ndarray) -> np.ndarray:
    hist = cv2.calcHist([hsv], [0, 1], mask.astype(np.uint8), [HUE_BINS, SAT_BINS], [0, 180, 0, 256])
    return cv2.normalize(hist, None, norm_type=cv2.NORM_L1).ravel()


def look(a: Sighting, b: Sighting) -> float:
    """Colour similarity 0..1 (1 - Bhattacharyya distance of the histograms)."""
    return 1.0 - float(cv2.compareHist(a.colour, b.colour, cv2.HISTCMP_BHATTACHARYYA))


def sight(frame: int, image_rgb: np.ndarray, subjects: list[Subject]) -> list[Sighting]:
    """The sightings of one frame's subjects, each with its occlusion by the others' masks."""
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
    hsv = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2HSV)
    out = [Sighting(frame, s, bbox(s.mask), border_cut(s.mask), sharpness(gray, s.mask), colours(hsv, s.mask))
           for s in subjects]
    for i, a in enumerate(out):
        others = np.zeros_like(a.subject.mask)
        for j, b in enumerate(out):
            if j != i:
                others |= b.subject.mask
        a.occluded = occlusion(a.subject.mask, others) if len(out) > 1 else 0.0
    return out


def _box_iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _centre_shift(a, b, diagonal: float) -> float:
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)) / diagonal


def associate(frames: list[list[Sighting]], height: int, width: int, max_shift: float) -> list[Track]:
    """Tracks from the sightings of each frame, frames in time order: a sighting joins the track of its label
    whose latest sighting is nearest (1 - box IoU + centre shift + 1 - colour similarity), if that shift is at most
    ``max_shift`` of the frame diagonal or the colours are alike (``SAME_LOOK``); each track takes at most one
    sighting a frame; the rest start tracks of their own. Colour alone never parts a near sighting from a track:
    a partial, blurred or occluded view changes it too much (tried: it split 11 of 100 synthetic objects)."""
    diagonal = float(np.hypot(height, width))
    # Imported here: every CPU worker imports the stages package, and scipy.optimize is 0.2 s of its start.
    from scipy.optimize import linear_sum_assignment

    tracks: list[Track] = []
    for sightings in frames:
        cost = np.full((len(sightings), len(tracks)), np.inf)
        for i, s in enumerate(sightings):
            for j, t in enumerate(tracks):
                if t.label == s.subject.label and t.last.frame != s.frame:
                    shift, alike = _centre_shift(s.box, t.last.box, diagonal), look(s, t.last)
                    if shift <= max_shift or alike >= SAME_LOOK:
                        cost[i, j] = 1 - _box_iou(s.box, t.last.box) + shift + 1 - alike
        matched: set[int] = set()
        if cost.size and np.isfinite(cost).any():
            rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
            for i, j in zip(rows, cols):
                if np.isfinite(cost[i, j]):
                    tracks[j].sightings.append(sightings[i])
                    matched.add(i)
        tracks += [Track(s.subject.label, [s]) for i, s in enumerate(sightings) if i not in matched]
    return tracks

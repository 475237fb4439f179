"""From subject labels to at most six clean, distinct subjects of one frame (the paper family's rules).

Models come in as two callables, so the rules are testable without them:
``detect(image_rgb, labels) -> list[Detection]`` and ``segment(image_rgb, boxes) -> (N, H, W) bool masks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from curation.config import SubjectsConfig
from curation.models.masks import bbox, clean_mask, iou, rle_encode

# Labels that name a person or a face: other objects overlapping their masks are parts of a person (a shirt,
# a hat, a hand), not subjects of their own.
HUMAN_WORDS = frozenset(
    "person people human man men woman women boy girl child children kid baby face player adult lady guy".split()
)


@dataclass
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels


@dataclass
class Subject:
    label: str
    score: float
    mask: np.ndarray  # bool (H, W), cleaned

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


Detect = Callable[[np.ndarray, list[str]], list[Detection]]
Segment = Callable[[np.ndarray, np.ndarray], np.ndarray]


def is_human(label: str) -> bool:
    return any(word in HUMAN_WORDS for word in label.lower().replace("-", " ").split())


def top_per_label(detections: Sequence[Detection], threshold: float, k: int) -> list[Detection]:
    """The ``k`` best boxes of each label scoring at least ``threshold``."""
    out: list[Detection] = []
    for label in dict.fromkeys(d.label for d in detections):
        mine = sorted((d for d in detections if d.label == label and d.score >= threshold), key=lambda d: -d.score)
        out += mine[:k]
    return out


def drop_parts_of_people(subjects: list[Subject], max_iou: float) -> list[Subject]:
    """An object whose mask overlaps a person or face mask above ``max_iou`` is dropped."""
    people = [s for s in subjects if is_human(s.label)]
    return [s for s in subjects if is_human(s.label) or all(iou(s.mask, p.mask) <= max_iou for p in people)]


def merge_duplicates(subjects: list[Subject], max_iou: float) -> list[Subject]:
    """Masks overlapping above ``max_iou`` (the same thing found under two labels, or twice) are one subject:
    the higher-scoring one is kept."""
    kept: list[Subject] = []
    for s in sorted(subjects, key=lambda s: -s.score):
        if all(iou(s.mask, k.mask) <= max_iou for k in kept):
            kept.append(s)
    return kept


def rank_and_cap(subjects: list[Subject], max_subjects: int) -> tuple[list[Subject], int]:
    """Best first by score x area; returns the kept subjects and how many were cut by the cap."""
    ranked = sorted(subjects, key=lambda s: -s.score * s.area)
    return ranked[:max_subjects], max(0, len(ranked) - max_subjects)


def frame_subjects(image_rgb: np.ndarray, labels: list[str], detect: Detect, segment: Segment,
                   cfg: SubjectsConfig) -> list[Subject]:
    """Detect the labels on one frame, segment each box, clean the masks and apply the selection rules (all of
    them but the cap, which ranks a clip's subjects once they are followed through its frames)."""
    if not labels:
        return []
    detections = top_per_label(detect(image_rgb, labels), cfg.box_threshold, cfg.max_boxes_per_label)
    if not detections:
        return []
    masks = segment(image_rgb, np.array([d.box for d in detections], dtype=np.float32))
    h, w = image_rgb.shape[:2]
    min_area = max(1, int(cfg.min_area_frac * h * w))
    subjects = []
    for d, m in zip(detections, masks):
        cleaned = clean_mask(m, cfg.morph_kernel, min_area, cfg.max_components)
        if cleaned is not None:
            subjects.append(Subject(d.label, d.score, cleaned))
    return merge_duplicates(drop_parts_of_people(subjects, cfg.face_iou), cfg.dedupe_iou)


def extract_subjects(
    image_rgb: np.ndarray, labels: list[str], detect: Detect, segment: Segment, cfg: SubjectsConfig
) -> tuple[list[Subject], int]:
    """The subjects of one frame, capped: the kept ones best first, and how many the cap cut."""
    return rank_and_cap(frame_subjects(image_rgb, labels, detect, segment, cfg), cfg.max_subjects)


def to_record(subject: Subject, frame: int) -> dict:
    """The manifest entry of one subject (fields of ``contract.SUBJECT``), seen in clip frame ``frame``."""
    return {
        "label": subject.label,
        "score": float(subject.score),
        "bbox": [float(v) for v in bbox(subject.mask)],
        "frame": int(frame),
        "mask_rle": rle_encode(subject.mask),
        "area": subject.area,
    }

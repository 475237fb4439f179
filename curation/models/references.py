"""From tracks to a clip's subjects and their references: which subjects are kept, the crop the clip's keyframe
gives each (inside the training window: ``same_clip``), and the reference crops chosen from its other sightings
by quality, preferring frames outside the window the trainer takes (``other_frames``).

A sighting's quality (0..1) is the product of the square roots of its size and sharpness relative to the subject's
best sighting, and the shares of its outline not cut by the border and not hidden by other subjects (the detector's
score has passed ``box_threshold`` already, and scores are not comparable across labels). A sighting below
``min_reference_quality``, or cut by the border beyond ``max_border_cut``, is not usable; a subject with no usable
sighting is dropped (``no_reference``). A usable frame outside the window goes first only when it is nearly as good
as the subject's best (``OUTSIDE_SHARE``): a frame half out of the picture is no better a reference for lying
outside the frames generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from common.contract import reference_member

from curation.config import SubjectsConfig
from curation.dedup.signals import encode_embedding
from curation.models.masks import bbox, rgba_crop
from curation.models.subjects import Detect, Segment, frame_subjects, to_record
from curation.models.tracking import Sighting, Track, associate, sight
from curation.video.frames import sample_indices

OUTSIDE_SHARE = 0.8  # of the best usable quality, at which a frame outside the training window is preferred


@dataclass
class Chosen:
    """A kept subject: its track, its keyframe (same-clip) sighting, and its references, best first."""

    track: Track
    primary: Sighting
    references: list[Sighting] = field(default_factory=list)
    quality: dict[int, float] = field(default_factory=dict)  # frame -> quality of the sighting there


def quality(track: Track) -> dict[int, float]:
    biggest = max(s.area for s in track.sightings) or 1
    sharpest = max(s.sharpness for s in track.sightings)

    def sharp(s: Sighting) -> float:
        return s.sharpness / sharpest if sharpest > 0 else 1.0  # a flat subject is as sharp in every frame

    return {s.frame: float((s.area / biggest) ** 0.5 * sharp(s) ** 0.5 * (1 - s.border_cut) * (1 - s.occluded))
            for s in track.sightings}


def choose(tracks: list[Track], keyframe: int, window_end: int, cfg: SubjectsConfig
           ) -> tuple[list[Chosen], dict[str, str]]:
    """The subjects kept (at most ``max_subjects``, best first by score x area at the keyframe, as a single frame
    ranks them) and, per label of a dropped track that no kept subject carries, why it was dropped: ``outside_window``
    (never seen in frames [0, window_end)), ``no_reference``, ``cap``."""
    kept: list[Chosen] = []
    dropped: dict[str, str] = {}
    for t in tracks:
        q = quality(t)

        def usable(s: Sighting) -> bool:
            return q[s.frame] >= cfg.min_reference_quality and s.border_cut <= cfg.max_border_cut

        inside = [s for s in t.sightings if s.frame < window_end]
        if not inside:
            dropped.setdefault(t.label, "outside_window")
            continue
        primary = t.at(keyframe) or max(inside, key=lambda s: q[s.frame])
        if not any(usable(s) for s in t.sightings):
            dropped.setdefault(t.label, "no_reference")
            continue
        best = max(q[s.frame] for s in t.sightings if usable(s))
        others = sorted((s for s in t.sightings if s is not primary and usable(s)),
                        key=lambda s: (not (s.frame >= window_end and q[s.frame] >= OUTSIDE_SHARE * best),
                                       -q[s.frame], s.frame))
        kept.append(Chosen(t, primary, others[:cfg.references], q))
    kept.sort(key=lambda c: (-c.primary.score * c.primary.area, c.primary.frame))
    for c in kept[cfg.max_subjects:]:
        dropped.setdefault(c.track.label, "cap")
    kept = kept[:cfg.max_subjects]
    labels = {c.track.label for c in kept}
    return kept, {label: why for label, why in dropped.items() if label not in labels}


Embed = Callable[[list[np.ndarray]], "np.ndarray"]  # RGB images -> (N, D) L2-normalised embeddings


@dataclass
class ClipSubjects:
    """What the subjects stage adds to a clip: manifest fields and the crops, in member order."""

    subjects: list[dict]  # contract.SUBJECT, the keyframe's sighting of each
    tracks: list[dict]  # contract.SUBJECT_TRACK, index-aligned
    labels: list[dict]  # contract.LABEL, one per caption label
    dropped: int  # subjects found and not kept
    pngs: list[bytes]  # the same-clip crops (subject_member order), then every reference (reference_member order)


def track_frames(num_frames: int, keyframe: int, count: int) -> list[int]:
    """The frames looked at: the keyframe and ``count - 1`` others spread over the whole clip."""
    return sorted({keyframe, *sample_indices(num_frames, count - 1)} if count > 1 else {keyframe})


def _on_gray(image_rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask's box with everything outside the mask mid-gray: what an image embedding of the subject sees."""
    x0, y0, x1, y1 = bbox(mask)
    crop = np.full((y1 - y0, x1 - x0, 3), 127, dtype=np.uint8)
    inside = mask[y0:y1, x0:x1]
    crop[inside] = image_rgb[y0:y1, x0:x1][inside]
    return crop


def _f32(x: float) -> float:
    """As the manifest stores it (float32): a shard's JSON and the manifest then hold the same number."""
    return float(np.float32(x))


def _point(s: Sighting) -> dict:
    return {"frame": s.frame, "bbox": [float(v) for v in s.box], "area": s.area, "border_cut": _f32(s.border_cut),
            "sharpness": _f32(s.sharpness), "occluded": _f32(s.occluded), "score": _f32(s.score)}


def clip_subjects(frames: dict[int, np.ndarray], labels: list[str], keyframe: int, window_end: int, detect: Detect,
                  segment: Segment, embed: Embed | None, cfg: SubjectsConfig) -> ClipSubjects:
    """Detect ``labels`` on every frame of ``frames`` (clip frame index -> RGB), follow the subjects through them,
    keep and rank them, choose their references and embed their crops. A subject whose crops cannot be made is
    dropped alone (``track_failed``)."""
    if not labels:
        return ClipSubjects([], [], [], 0, [])
    sightings = [sight(i, frames[i], frame_subjects(frames[i], labels, detect, segment, cfg)) for i in sorted(frames)]
    h, w = frames[keyframe].shape[:2]
    tracks = associate(sightings, h, w, cfg.max_shift)
    chosen, why = choose(tracks, keyframe, window_end, cfg)
    dropped = len(tracks) - len(chosen)
    made = []
    for c in chosen:
        try:
            sights = [c.primary, *c.references]
            crops = [rgba_crop(frames[s.frame], s.subject.mask) for s in sights]
            views = [_on_gray(frames[s.frame], s.subject.mask) for s in sights]
            made.append((c, crops, views))
        except (ValueError, cv2.error):
            why.setdefault(c.track.label, "track_failed")
            dropped += 1
    embeddings = embed([v for _, _, views in made for v in views]) if embed is not None and made else None
    out = ClipSubjects([], [], [], dropped, [])
    refs: list[bytes] = []
    at = 0
    for k, (c, crops, views) in enumerate(made):
        mean = None
        if embeddings is not None:
            mean = np.asarray(embeddings[at : at + len(views)], dtype=np.float32).mean(0)
            mean = mean / (np.linalg.norm(mean) or 1.0)
            at += len(views)
        out.subjects.append(to_record(c.primary.subject, c.primary.frame))
        out.tracks.append({
            "track": [_point(s) for s in c.track.sightings],
            "references": [{"frame": s.frame, "member": reference_member(k, r), "quality": _f32(c.quality[s.frame]),
                            "in_window": s.frame < window_end} for r, s in enumerate(c.references)],
            "embedding": None if mean is None else encode_embedding(mean),
        })
        out.pngs.append(crops[0])
        refs += crops[1:]
    out.pngs += refs
    kept: dict[str, int] = {}
    for k, (c, _, _) in enumerate(made):
        kept.setdefault(c.track.label, k)  # a label's first (best) subject
    out.labels = [{"label": label, "status": "grounded" if label in kept else
                   (f"dropped:{why[label]}" if label in why else "not_found"), "subject": kept.get(label)}
                  for label in dict.fromkeys(labels)]
    return out

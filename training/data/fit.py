"""What one epoch of a job takes from its dataset, known from the manifest before any shard is read: how many clips
train at each frame count, how many are too short for every window, how many are held out for validation, and which
clips the validation loss is measured on. A dataset that gives the job nothing is one error at start-up, not a run
that waits for a batch for ever."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from common import contract as C
from common.storage import Storage

from ..config import DataConfig, JobError
from .split import held_out_source

@dataclass
class DatasetFit:
    clips: int = 0
    trainable: int = 0  # clips of training sources the job takes
    frames: Counter = field(default_factory=Counter)  # window frame count -> those clips (none: captions only)
    too_short: int = 0  # clips of training sources shorter than the shortest window
    held_out: int = 0  # clips of validation sources
    near_duplicates: int = 0  # clips the dataset's dedup record removes (data.near_duplicates: drop)
    validation: list[tuple[str, str]] = field(default_factory=list)  # (shard URL, clip id) the loss is measured on

    def summary(self, cfg: DataConfig) -> str:
        frames = ", ".join(f"{n}: {self.frames[n]}" for n in sorted(self.frames)) or "-"
        return (f"dataset: {self.clips} clips; {self.trainable} train (clips per frame count: {frames}), "
                f"{self.too_short} too short for the shortest window ({cfg.frames[0]} frames at "
                f"{cfg.target_fps or 'every'} fps), {self.held_out} held out for validation "
                f"({len(self.validation)} measured), {self.near_duplicates} near duplicates left out")


def dataset_fit(cfg: DataConfig, media: bool, holdout: float, max_validation: int) -> DatasetFit | None:
    """The fit of the job's dataset roots (None when data.urls names shards, which have no manifest to read);
    ``media=False`` (captions only) has no frames to count. JobError when no clip would train."""
    roots = [u for u in cfg.urls if not urlsplit(u).path.endswith(".tar")]
    if len(roots) != len(cfg.urls):
        return None
    storage = Storage(cfg.storage)
    fit, held = DatasetFit(), []
    for root in roots:
        root = root.rstrip("/")
        try:
            rows = C.read_manifest(storage, root, ["clip_id", "source_sha1", "fps", "num_frames", "shard"]).to_pylist()
            dropped = C.removed_clips(storage, root) if cfg.near_duplicates == "drop" else frozenset()
        except ValueError as e:  # a manifest part or dedup record of another schema, named
            raise JobError(str(e)) from None
        for r in rows:
            fit.clips += 1
            if r["clip_id"] in dropped:
                fit.near_duplicates += 1
                continue
            frames = cfg.window.frames_for(r["fps"], r["num_frames"]) if media else None
            usable = frames is not None or not media
            if held_out_source(r["source_sha1"], holdout):
                fit.held_out += 1
                if usable:
                    held.append((storage.join(root, C.SHARDS_DIR, r["shard"] + ".tar"), r["clip_id"]))
            elif not usable:
                fit.too_short += 1
            else:
                fit.trainable += 1
                if frames is not None:
                    fit.frames[frames] += 1
    # The clips of validation sources whose ids hash lowest: the same set on every rank and every run.
    held.sort(key=lambda sc: hashlib.sha1(sc[1].encode()).hexdigest())
    fit.validation = held[:max_validation]
    if not fit.trainable:
        raise JobError(f"no clip of data.urls can be trained on: {fit.summary(cfg).removeprefix('dataset: ')}. "
                       "Curate with scenes.min_clip_s unset (the training window), or give data.frames a shorter "
                       "count")
    return fit

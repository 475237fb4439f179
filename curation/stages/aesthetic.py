"""Aesthetic score per clip on a GPU actor, from a few of the frames CaptionPrepStage decoded.

Reads ``frames`` (JPEG bytes); writes meta ``aesthetic`` (a float, about 1..10). Without captions nothing reads
``frames`` after this stage, so it removes them. A clip below ``aesthetic.min_score`` leaves as a ``dropped`` row
(with its scores), before captioning spends anything on it.
"""

from __future__ import annotations

import numpy as np

from ..config import JobConfig
from ..frames import decode_image, sample_indices
from ..model_runtime import device_for, go_offline
from .base import BatchedStage, Row, make_row


class AestheticStage(BatchedStage):
    """One CLIP forward pass over every sampled frame of the batch's clips; a clip's score is its frames' mean."""

    name = "aesthetic"
    num_cpus = 1.0
    num_gpus = 1.0
    batch_size = 32

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg.aesthetic
        self.num_gpus = self.cfg.num_gpus
        self.batch_size = self.cfg.batch_size
        self.keep_frames = cfg.caption.enabled  # the caption stage reads them next
        self.score = None

    def setup(self) -> None:
        go_offline()
        from ..aesthetic import AestheticScorer

        self.score = AestheticScorer.load(self.cfg, device_for(self.num_gpus))

    def inputs(self, row: Row) -> np.ndarray:
        # With captions the prep stage sampled the MLLM's frames: score num_frames of them, spread evenly.
        frames = row["frames"]
        return np.stack([decode_image(frames[i]) for i in sample_indices(len(frames), self.cfg.num_frames)])

    def predict(self, videos: list[np.ndarray]) -> list[float]:
        return self.score(videos)

    def finish(self, row: Row, score: float) -> Row:
        meta = {**row["meta"], "aesthetic": score}
        if self.cfg.min_score is not None and score < self.cfg.min_score:
            return make_row("dropped", row["source_uri"], {**meta, "dropped_by": self.name})
        kept = row if self.keep_frames else {k: v for k, v in row.items() if k != "frames"}
        return kept | {"meta": meta}

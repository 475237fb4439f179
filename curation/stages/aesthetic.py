"""Aesthetic score per clip on a GPU actor, from a few of the frames CaptionPrepStage decoded.

Reads ``frames`` (JPEG bytes); writes meta ``aesthetic`` (a float, about 1..10) and ``embedding`` (the clip's mean
CLIP image embedding, which near-duplicate removal compares: ``curation.dedup.signals``). Without captions nothing reads
``frames`` after this stage, so it removes them. A clip below ``aesthetic.min_score`` leaves as a ``dropped`` row
(with its scores), before captioning spends anything on it.
"""

from __future__ import annotations

import numpy as np

from curation.config import JobConfig
from curation.dedup.signals import encode_embedding
from curation.models.runtime import device_for, go_offline
from curation.pipeline.row import Row
from curation.pipeline.stage import BatchedStage
from curation.video.frames import decode_image, sample_indices


class AestheticStage(BatchedStage):
    """One CLIP forward pass over every sampled frame of the batch's clips; a clip's score is its frames' mean."""

    name = "aesthetic"
    section = "aesthetic"

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.keep_frames = cfg.caption.enabled  # the caption stage reads them next
        self.score = None

    def setup(self) -> None:
        go_offline()
        from curation.models.aesthetic import AestheticScorer

        self.score = AestheticScorer.load(self.cfg.aesthetic, device_for(self.cfg.aesthetic.num_gpus))

    def inputs(self, row: Row) -> np.ndarray:
        # With captions the prep stage sampled the MLLM's frames: score num_frames of them, spread evenly.
        frames = row.frames
        return np.stack([decode_image(frames[i]) for i in sample_indices(len(frames), self.cfg.aesthetic.num_frames)])

    def predict(self, videos: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        return self.score(videos)

    def finish(self, row: Row, result: tuple[float, np.ndarray]) -> Row:
        score, embedding = result
        meta = {**row.meta, "aesthetic": score, "embedding": encode_embedding(embedding)}
        min_score = self.cfg.aesthetic.min_score
        if min_score is not None and score < min_score:
            return Row("dropped", row.source_uri, {**meta, "dropped_by": self.name})
        return row.replace(meta=meta, frames=row.frames if self.keep_frames else None)

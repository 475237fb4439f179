"""Burned-in text (subtitles, captions, titles, watermarks, channel logos) per clip, on CPU workers.

A DB text detector (``curation.models.text_detection``; default PP-OCRv4's, from the rapidocr-onnxruntime package)
looks at ``text.num_frames`` frames spread over the clip's training window (``common.contract.window_frames``: what
the trainer takes), decoded from the clip's MP4, so it runs after encode. Meta added: ``text_area``, the share of the
frame the text boxes cover in the frame with the most (0..1), and ``text_frames``, how many of the frames show any
text box. A clip with ``text_area`` above ``filters.max_text_area`` leaves as a ``dropped`` row (``text``) with its
scores. A clip whose frames cannot be decoded, or whose detector call fails, becomes that clip's error row only.
With ``text.enabled`` false the stage passes every row untouched.
"""

from __future__ import annotations

import numpy as np

from common.contract import window_frames

from curation.config import JobConfig
from curation.models.text_detection import TextDetector
from curation.pipeline.row import Row
from curation.pipeline.stage import Stage
from curation.video.frames import decode_frames, sample_indices


class TextStage(Stage):
    name = "text"

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.detect: TextDetector | None = None

    def setup(self) -> None:
        if self.cfg.text.enabled:
            # One intra-op thread per CPU the worker holds (1 by default): the CPU workers already fill the cores.
            self.detect = TextDetector.load(self.cfg.text, threads=max(1, int(self.resources(self.cfg).cpus)))

    def process(self, row: Row) -> list[Row]:
        if not self.cfg.text.enabled:  # pipeline() leaves the stage out; a chain built by hand may not
            return [row]
        if row.mp4 is None:
            raise AssertionError("the text stage reads the clip's MP4: it runs after the encode stage")
        meta = row.meta
        picks = sample_indices(window_frames(meta["fps"], meta["num_frames"]), self.cfg.text.num_frames)
        frames = decode_frames(row.mp4, set(picks))
        found = self.detect([frames[i] for i in picks])
        # float32, as the manifest stores it: a shard's JSON and the manifest then hold the same number.
        meta = {**meta, "text_area": float(np.float32(max(f.area for f in found))),
                "text_frames": sum(1 for f in found if f.boxes)}
        limit = self.cfg.filters.max_text_area
        if limit is not None and meta["text_area"] > limit:
            return [Row("dropped", row.source_uri, {**meta, "dropped_by": self.name})]
        return [row.replace(meta=meta)]

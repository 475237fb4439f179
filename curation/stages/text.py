"""Burned-in text (subtitles, captions, titles, watermarks, channel logos) per clip, on CPU workers.

A DB text detector (``curation.models.text_detection``; default PP-OCRv4's, from the rapidocr-onnxruntime package)
looks at ``text.num_frames`` frames spread over the clip's training window (``TextCheck``). Meta added:
``text_area``, the share of the frame the text boxes cover in the frame with the most (0..1), and ``text_frames``,
how many of the frames show any text box. A clip with ``text_area`` above ``filters.max_text_area`` leaves as a
``dropped`` row (``text``) with its scores.

Most clips are measured in the scene pass, on the frames it holds, before they are encoded (so a clip the filter
drops is never encoded: ``curation.video.one_pass``); they arrive with their scores and pass. This stage measures
the rest, the clips the encode stage cut in a second decode, on frames decoded from the clip's MP4. A clip whose
frames cannot be decoded, or whose detector call fails, becomes that clip's error row only. With ``text.enabled``
false the stage passes every row untouched.
"""

from __future__ import annotations

from curation.config import JobConfig
from curation.models.text_detection import TextCheck
from curation.pipeline.row import Row
from curation.pipeline.stage import Stage
from curation.video.frames import decode_frames


class TextStage(Stage):
    name = "text"

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.check: TextCheck | None = None

    def setup(self) -> None:
        if self.cfg.text.enabled:
            # One intra-op thread per CPU the worker holds (1 by default): the CPU workers already fill the cores.
            self.check = TextCheck.load(self.cfg, threads=max(1, int(self.resources(self.cfg).cpus)))

    def process(self, row: Row) -> list[Row]:
        if not self.cfg.text.enabled or "text_area" in row.meta:  # off, or measured in the scene pass
            return [row]
        if row.mp4 is None:
            raise AssertionError("the text stage reads the clip's MP4: it runs after the encode stage")
        picks = self.check.picks(row.meta["fps"], row.meta["num_frames"])
        frames = decode_frames(row.mp4, set(picks))
        meta = {**row.meta, **self.check.measure([frames[i] for i in picks])}
        if not self.check.keeps(meta):
            return [Row("dropped", row.source_uri, {**meta, "dropped_by": self.name})]
        return [row.replace(meta=meta)]

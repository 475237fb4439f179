"""Captioning: CPU frame preparation (for the aesthetic stage too), then batched MLLM generation on a GPU actor.

Row field added here: ``frames`` (list of JPEG bytes: the MLLM's frames, of which the aesthetic stage scores a
few; removed again by the last of the two that runs), drawn from the clip's training window
(``common.contract.window_frames``): the frames the default trainer takes, so the caption describes what the model
is trained to generate.
"""

from __future__ import annotations

import cv2

from common.contract import window_frames

from curation.config import JobConfig
from curation.models.captioning import Captioner, caption_videos
from curation.models.runtime import device_for, go_offline
from curation.models.vllm_engine import VllmCaptioner
from curation.pipeline.row import Row
from curation.pipeline.stage import BatchedStage, Stage
from curation.video.frames import decode_frames, encode_image, fit_pixels, sample_indices


class CaptionPrepStage(Stage):
    """Decode the clip once for the MLLM and the aesthetic stage: frames sampled evenly over its training window,
    resized for the MLLM (without captions, the aesthetic stage's own few, at the same size)."""

    name = "caption_prep"

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.num_frames = cfg.caption.num_frames if cfg.caption.enabled else cfg.aesthetic.num_frames

    def process(self, row: Row) -> list[Row]:
        meta = dict(row.meta)
        window = window_frames(meta["fps"], meta["num_frames"])
        picks = sample_indices(window, self.num_frames)
        frames = decode_frames(row.mp4, set(picks))
        h, w = frames[picks[0]].shape[:2]
        size = fit_pixels(w, h, self.cfg.caption.max_pixels)
        jpegs = [
            encode_image(cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA), ".jpg", self.cfg.caption.jpeg_quality)
            for i in picks
        ]
        meta["frame_indices"] = picks
        return [row.replace(meta=meta, frames=jpegs)]


class CaptionStage(BatchedStage):
    """One generate() call per batch of clips, on the engine caption.engine names (transformers in the actor, or a
    vLLM server beside it); a clip whose answer does not parse is retried, then becomes an error row, and a failing
    batch call is retried clip by clip, so one bad clip never costs the others."""

    name = "caption"
    section = "caption"

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.engine = VllmCaptioner if cfg.caption.engine == "vllm" else Captioner
        self.generate = None

    def setup(self) -> None:
        go_offline()
        self.generate = self.engine.load(self.cfg.caption, device_for(self.cfg.caption.num_gpus))

    def teardown(self) -> None:
        if hasattr(self.generate, "close"):  # the vLLM engine's server process
            self.generate.close()

    def inputs(self, row: Row):
        return self.engine.video(row.frames)  # the engine's own form of the clip's frames

    def predict(self, videos: list) -> list:
        return caption_videos(self.generate, videos, self.cfg.caption.retries)

    def finish(self, row: Row, result) -> Row:
        return row.replace(meta={**row.meta, "caption": result.caption, "subject_labels": result.subjects}, frames=None)

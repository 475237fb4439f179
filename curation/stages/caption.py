"""Captioning: CPU frame preparation, then batched MLLM generation on a GPU actor.

Row fields added here: ``frames`` (list of JPEG bytes, the MLLM's frames, removed again by CaptionStage) and
``keyframe`` (PNG bytes of the full-size middle frame, for SubjectStage, which removes it).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..captioning import Captioner, caption_videos
from ..config import JobConfig
from ..frames import decode_frames, decode_image, encode_image, fit_pixels, sample_indices
from ..model_runtime import device_for, go_offline
from .base import Row, Stage, error_row


class CaptionPrepStage(Stage):
    """Decode the clip once: evenly sampled frames resized for the MLLM, and the keyframe for subject detection."""

    name = "caption_prep"
    num_cpus = 1.0

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg.caption
        self.keyframe = cfg.subjects.enabled

    def process(self, row: Row) -> list[Row]:
        meta = dict(row["meta"])
        picks = sample_indices(meta["num_frames"], self.cfg.num_frames)
        key = meta["num_frames"] // 2
        frames = decode_frames(row["mp4"], set(picks) | ({key} if self.keyframe else set()))
        h, w = frames[picks[0]].shape[:2]
        size = fit_pixels(w, h, self.cfg.max_pixels)
        jpegs = [
            encode_image(cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA), ".jpg", self.cfg.jpeg_quality)
            for i in picks
        ]
        meta["caption_frames"] = picks
        out = {**row, "meta": meta, "frames": jpegs}
        if self.keyframe:
            meta["keyframe"] = key
            out["keyframe"] = encode_image(frames[key], ".png")
        return [out]


class CaptionStage(Stage):
    """One generate() call per batch of clips; a clip whose answer does not parse is retried, then becomes an
    error row, and a failing batch call is retried clip by clip, so one bad clip never costs the others."""

    name = "caption"
    num_cpus = 1.0
    num_gpus = 1.0
    batch_size = 8

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg.caption
        self.num_gpus = self.cfg.num_gpus
        self.batch_size = self.cfg.batch_size
        self.generate = None

    def setup(self) -> None:
        go_offline()
        self.generate = Captioner.load(self.cfg, device_for(self.num_gpus))

    def stream(self, batch: list[Row]) -> list[Row]:  # one batched model call for the whole batch
        out = list(batch)
        todo: list[tuple[int, np.ndarray]] = []
        for pos, row in enumerate(batch):
            if row["kind"] not in self.consumes:
                continue
            try:
                todo.append((pos, np.stack([decode_image(f) for f in row["frames"]])))
            except Exception as e:  # noqa: BLE001 - unreadable frames fail this clip only
                out[pos] = error_row(row, self.name, e)
        for (pos, _), result in zip(todo, self._caption([video for _, video in todo])):
            row = out[pos]
            if isinstance(result, Exception):
                out[pos] = error_row(row, self.name, result)
            else:
                meta = {**row["meta"], "caption": result.caption, "subject_labels": result.subjects}
                out[pos] = {k: v for k, v in row.items() if k != "frames"} | {"meta": meta}
        return out

    def _caption(self, videos: list[np.ndarray]) -> list:
        if not videos:
            return []
        try:
            return caption_videos(self.generate, videos, self.cfg.retries)
        except Exception as e:  # noqa: BLE001 - isolate the clip that broke the batched call
            if len(videos) == 1:
                return [e]
            return [r for video in videos for r in self._caption([video])]


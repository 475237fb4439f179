"""Subjects: the caption's subject labels detected on ``subjects.track_frames`` frames of the clip (its keyframe, the
middle of the training window, and others spread over the whole clip), segmented, followed from frame to frame,
kept up to six; for each, the keyframe's crop and reference crops chosen from its other frames
(``curation.models.references``), and an image embedding of them for matching across clips.

Reads ``mp4`` and meta ``subject_labels``; writes meta ``keyframe``, ``subjects`` (fields of ``contract.SUBJECT``,
masks as RLE), ``subject_tracks``, ``subject_grounding`` (each label's status) and ``num_subjects_dropped``, and
``pngs`` (the RGBA crops, in member order: ``contract.png_members``).
"""

from __future__ import annotations

from common.contract import window_frames

from curation.config import JobConfig
from curation.models.references import clip_subjects, track_frames
from curation.models.runtime import device_for, go_offline
from curation.pipeline.row import Row
from curation.pipeline.stage import Stage
from curation.video.frames import decode_frames


class SubjectStage(Stage):
    name = "subjects"
    section = "subjects"

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.detect = self.segment = self.embed = None

    def setup(self) -> None:
        go_offline()
        from curation.models.detection import SamSegmenter, load_detector
        from curation.models.embedding import ImageEmbedder

        cfg, device = self.cfg.subjects, device_for(self.cfg.subjects.num_gpus)
        self.detect = load_detector(cfg, device)
        self.segment = SamSegmenter(cfg, device)
        embedder = ImageEmbedder.load(cfg.identity_model or self.cfg.aesthetic.clip_model, self.cfg.aesthetic.dtype,
                                      device)
        self.embed = lambda images: embedder(images).cpu().numpy()

    def process(self, row: Row) -> list[Row]:
        meta = row.meta
        window = window_frames(meta["fps"], meta["num_frames"])
        key = window // 2
        picks = track_frames(meta["num_frames"], key, self.cfg.subjects.track_frames)
        labels = meta["subject_labels"]
        frames = decode_frames(row.mp4, set(picks)) if labels else {}
        found = clip_subjects(frames, labels, key, window, self.detect, self.segment, self.embed, self.cfg.subjects)
        meta = {**meta, "keyframe": key, "subjects": found.subjects, "subject_tracks": found.tracks,
                "subject_grounding": found.labels, "num_subjects_dropped": found.dropped}
        return [row.replace(meta=meta, pngs=found.pngs)]

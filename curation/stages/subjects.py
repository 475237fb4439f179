"""Subjects: detect the caption's subject labels on the keyframe, segment them, keep up to six clean ones.

Reads ``keyframe`` (PNG) and meta ``subject_labels`` / ``keyframe``; writes meta ``subjects`` (fields of
``contract.SUBJECT``, masks as RLE) and ``num_subjects_dropped``, and ``pngs`` (the RGBA crops, best first).
"""

from __future__ import annotations

from ..config import JobConfig
from ..frames import decode_image
from ..model_runtime import device_for, go_offline
from ..subjects import extract_subjects, to_record
from .base import Row, Stage


class SubjectStage(Stage):
    name = "subjects"
    num_cpus = 1.0
    num_gpus = 1.0
    batch_size = 4

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg.subjects
        self.num_gpus = self.cfg.num_gpus
        self.batch_size = self.cfg.batch_size
        self.detect = self.segment = None

    def setup(self) -> None:
        go_offline()
        from ..subject_models import SamSegmenter, load_detector

        device = device_for(self.num_gpus)
        self.detect = load_detector(self.cfg, device)
        self.segment = SamSegmenter(self.cfg, device)

    def process(self, row: Row) -> list[Row]:
        meta = row["meta"]
        image = decode_image(row["keyframe"])
        subjects, dropped = extract_subjects(image, meta["subject_labels"], self.detect, self.segment, self.cfg)
        records = [to_record(s, image, meta["keyframe"]) for s in subjects]
        meta = {**meta, "subjects": [r for r, _ in records], "num_subjects_dropped": dropped}
        rest = {k: v for k, v in row.items() if k != "keyframe"}
        return [rest | {"meta": meta, "pngs": [png for _, png in records]}]

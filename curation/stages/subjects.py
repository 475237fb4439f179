"""Subjects: detect the caption's subject labels on the keyframe, segment them, keep up to six clean ones.

Reads ``keyframe`` (PNG) and meta ``subject_labels`` / ``keyframe``; writes meta ``subjects`` (fields of
``contract.SUBJECT``, masks as RLE) and ``num_subjects_dropped``, and ``pngs`` (the RGBA crops, best first).
"""

from __future__ import annotations

from curation.config import JobConfig
from curation.models.runtime import device_for, go_offline
from curation.models.subjects import extract_subjects, to_record
from curation.pipeline.row import Row
from curation.pipeline.stage import Stage
from curation.video.frames import decode_image


class SubjectStage(Stage):
    name = "subjects"
    section = "subjects"

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.detect = self.segment = None

    def setup(self) -> None:
        go_offline()
        from curation.models.detection import SamSegmenter, load_detector

        device = device_for(self.cfg.subjects.num_gpus)
        self.detect = load_detector(self.cfg.subjects, device)
        self.segment = SamSegmenter(self.cfg.subjects, device)

    def process(self, row: Row) -> list[Row]:
        meta = row.meta
        image = decode_image(row.keyframe)
        subjects, dropped = extract_subjects(image, meta["subject_labels"], self.detect, self.segment, self.cfg.subjects)
        records = [to_record(s, image, meta["keyframe"]) for s in subjects]
        meta = {**meta, "subjects": [r for r, _ in records], "num_subjects_dropped": dropped}
        return [row.replace(meta=meta, keyframe=None, pngs=[png for _, png in records])]

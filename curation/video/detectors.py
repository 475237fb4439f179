"""The job's shot detectors: PySceneDetect's and TransNetV2, built once per worker and made fresh per source."""

from __future__ import annotations

from curation.config import DetectorConfig
from curation.video.shots import Detector, SceneDetectDetector
from curation.video.transnet import TransNetV2Detector, TransNetV2Model


class Detectors:
    """The job's detectors, built once per worker (TransNetV2 loads its weights here), then made fresh per source."""

    def __init__(self, cfgs: list[DetectorConfig], device: str = "cpu"):
        self.cfgs = cfgs
        self.models = {}
        for i, c in enumerate(cfgs):
            if c.kind == "transnetv2":
                self.models[i] = TransNetV2Model.load(c.args, device)

    def for_source(self, fps: float) -> list[Detector]:
        return [TransNetV2Detector(self.models[i], c.args) if c.kind == "transnetv2" else SceneDetectDetector(c.kind, c.args, fps)
                for i, c in enumerate(self.cfgs)]

"""The job's shot detectors: PySceneDetect's and TransNetV2, built once per worker and made fresh per source."""

from __future__ import annotations

import inspect
import typing

from common.typed_config import ConfigError, coerce

from curation.config import DetectorConfig
from curation.video.shots import SCENEDETECT_KINDS, Detector, SceneDetectDetector
from curation.video.transnet import TransNetV2Detector, TransNetV2Model

SETTABLE = (int, float, bool, str)  # what a job file's detector args can hold
HARD_CUT_KINDS = ("adaptive", "content", "histogram", "hash")


class Detectors:
    """The job's detectors, built once per worker (TransNetV2 loads its weights here), then made fresh per source."""

    def __init__(self, cfgs: list[DetectorConfig], device: str = "cpu"):
        self.cfgs = cfgs
        self.models = {}
        for i, c in enumerate(cfgs):
            if c.kind == "transnetv2":
                self.models[i] = TransNetV2Model.load(c.args, device)

    def for_source(self, fps: float) -> list[Detector]:
        return [TransNetV2Detector(self.models[i], c.args, gated(c, self.cfgs)) if c.kind == "transnetv2"
                else SceneDetectDetector(c.kind, c.args, fps) for i, c in enumerate(self.cfgs)]


def gated(cfg: DetectorConfig, cfgs: list[DetectorConfig]) -> bool:
    """Whether transnetv2 runs only where a gradual transition may be: its ``gate`` arg, by default whenever another
    detector of the set reports hard cuts (every PySceneDetect kind but ``threshold``, which sees fades to black)."""
    return bool(cfg.args.get("gate", any(c.kind in HARD_CUT_KINDS for c in cfgs)))


def check_scenedetect_args(field: str, kind: str, args: dict) -> None:
    """PySceneDetect's detectors keep whatever they are given and fail on the first frame (``"high"`` as a
    threshold), or take a wrong type as a number (``true`` as 1): each argument is checked against the type the
    detector's signature declares, so a job that cannot work stops before Ray starts."""
    params = {n: p for n, p in inspect.signature(SCENEDETECT_KINDS[kind].__init__).parameters.items() if n != "self"}
    for name, value in args.items():
        if name not in params:
            raise ConfigError(f"{field}.args.{name}: {kind} takes no such argument (it takes {', '.join(params)})")
        tp = _settable_type(params[name].annotation)
        if tp is None:
            raise ConfigError(f"{field}.args.{name}: {kind}'s {name} cannot be set from a job file")
        coerce(value, tp, f"{field}.args.{name}")


def _settable_type(annotation) -> typing.Any:
    """The annotation as a type a job file can hold (a Union of plain types: FrameTimecode forward references mean a
    frame count, seconds or a timecode string), or None."""
    if annotation in SETTABLE:
        return annotation
    args = typing.get_args(annotation)
    plain = tuple(a for a in args if a in SETTABLE)
    if plain and all(a in SETTABLE or a is type(None) or isinstance(a, typing.ForwardRef) for a in args):
        return typing.Union[plain]
    return None

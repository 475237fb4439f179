"""The curation stages, in pipeline order."""

from ..config import JobConfig
from .base import Row, Stage, error_row, make_row
from .encode import EncodeStage
from .model_stages import enabled_model_stages
from .probe import ProbeStage
from .scenes import SceneStage

CPU_STAGES = (ProbeStage, SceneStage, EncodeStage)


def pipeline(cfg: JobConfig) -> list[type[Stage]]:
    """The job's stages in order: the CPU stages, then the model stages the config enables."""
    return [*CPU_STAGES, *enabled_model_stages(cfg)]


__all__ = ["CPU_STAGES", "pipeline", "EncodeStage", "ProbeStage", "Row", "SceneStage", "Stage", "error_row", "make_row"]

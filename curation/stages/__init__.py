"""The curation stages, in pipeline order."""

from .base import Row, Stage, error_row, make_row
from .encode import EncodeStage
from .filters import FilterStage
from .probe import ProbeStage
from .scenes import SceneStage

CPU_STAGES = (ProbeStage, SceneStage, FilterStage, EncodeStage)

__all__ = ["CPU_STAGES", "EncodeStage", "FilterStage", "ProbeStage", "Row", "SceneStage", "Stage", "error_row", "make_row"]

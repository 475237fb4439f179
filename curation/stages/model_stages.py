"""The GPU half of curation, in order after the CPU stages: frame prep (CPU), captioning, subject extraction.

Row fields they add (the runner's Arrow schema must carry them): ``frames`` list<binary> (CaptionPrep ->
Caption), ``keyframe`` binary (CaptionPrep -> Subject), ``pngs`` list<binary> (Subject -> writer).
"""

from __future__ import annotations

from ..config import JobConfig
from .base import Stage
from .caption import CaptionPrepStage, CaptionStage
from .subjects import SubjectStage

MODEL_STAGES = (CaptionPrepStage, CaptionStage, SubjectStage)


def enabled_model_stages(cfg: JobConfig) -> list[type[Stage]]:
    """The model stages this job runs; subjects only with captions, which give their labels."""
    if not cfg.caption.enabled:
        return []
    return [CaptionPrepStage, CaptionStage] + ([SubjectStage] if cfg.subjects.enabled else [])

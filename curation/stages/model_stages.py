"""The GPU half of curation, in order after the CPU stages: frame prep (CPU), aesthetic score, captioning, subject
extraction. The CPU prep comes first so that the GPU stages, when they take the same GPU share, chain in one actor.

Row fields they add (the runner's Arrow schema must carry them): ``frames`` list<binary> (CaptionPrep ->
Aesthetic, Caption), ``keyframe`` binary (CaptionPrep -> Subject), ``pngs`` list<binary> (Subject -> writer).
"""

from __future__ import annotations

from ..config import JobConfig
from .aesthetic import AestheticStage
from .base import Stage
from .caption import CaptionPrepStage, CaptionStage
from .subjects import SubjectStage

MODEL_STAGES = (CaptionPrepStage, AestheticStage, CaptionStage, SubjectStage)


def enabled_model_stages(cfg: JobConfig) -> list[type[Stage]]:
    """The model stages this job runs, each enabled on its own, with the prep they need; subjects only with
    captions, which give their labels."""
    wanted = {
        AestheticStage: cfg.aesthetic.enabled,
        CaptionStage: cfg.caption.enabled,
        SubjectStage: cfg.caption.enabled and cfg.subjects.enabled,
    }
    models = [stage for stage in MODEL_STAGES if wanted.get(stage)]
    return [CaptionPrepStage, *models] if models else []

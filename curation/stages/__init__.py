"""The curation stages, in pipeline order: scenes (which probes each source as it opens it) and encode on CPUs, then
the model stages the config enables.

The model stages come after the CPU ones: caption prep (CPU) decodes each clip once for them, then aesthetic score,
captioning and subject extraction, which chain in one GPU worker when they take the same GPU share.
"""

from curation.config import JobConfig
from curation.pipeline.stage import Stage
from curation.stages.aesthetic import AestheticStage
from curation.stages.caption import CaptionPrepStage, CaptionStage
from curation.stages.encode import EncodeStage
from curation.stages.scenes import SceneStage
from curation.stages.subjects import SubjectStage

CPU_STAGES = (SceneStage, EncodeStage)
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


def pipeline(cfg: JobConfig) -> list[type[Stage]]:
    """The job's stages in order: the CPU stages, then the model stages the config enables."""
    return [*CPU_STAGES, *enabled_model_stages(cfg)]

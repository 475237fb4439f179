"""The curation stages, in pipeline order: scenes (which probes each source as it opens it), encode and burned-in
text (``text.enabled``) on CPUs, then the model stages the config enables.

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
from curation.stages.text import TextStage

CPU_STAGES = (SceneStage, EncodeStage, TextStage)  # every CPU stage, in order; pipeline() leaves out disabled ones
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


def enabled_cpu_stages(cfg: JobConfig) -> list[type[Stage]]:
    """The CPU stages this job runs: scenes and encode always, the text filter when ``text.enabled``."""
    return [stage for stage in CPU_STAGES if stage is not TextStage or cfg.text.enabled]


def pipeline(cfg: JobConfig) -> list[type[Stage]]:
    """The job's stages in order: the CPU stages, then the model stages the config enables."""
    return [*enabled_cpu_stages(cfg), *enabled_model_stages(cfg)]

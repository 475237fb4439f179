"""What is checked before Ray starts: a job that cannot work stops with one line naming the field, instead of
failing every clip in the workers (where a failure looks like the source's fault)."""

from __future__ import annotations

import logging
from pathlib import Path

from common.contract import TRAINING_WINDOW
from common.typed_config import ConfigError

from curation.config import DetectorConfig, JobConfig
from curation.video.encoding import check_encoder

log = logging.getLogger("curation")
COMMON_FPS = (23.976, 24, 25, 29.97, 30, 50, 60)


def check_job(cfg: JobConfig) -> None:
    try:
        check_encoder(cfg.encode)
    except Exception as e:  # noqa: BLE001 - any failure to open the encoder is the config's
        raise ConfigError(f"encode: cannot encode with codec={cfg.encode.codec!r} preset={cfg.encode.preset!r} "
                          f"crf={cfg.encode.crf}: {e}") from None
    for i, d in enumerate(cfg.scenes.detectors):
        _check_detector(f"scenes.detectors[{i}]", d)
    _warn_untrainable(cfg.scenes.min_clip_s)
    if cfg.text.enabled:
        from curation.models.text_detection import model_path

        model_path(cfg.text.model)  # ConfigError naming the file when it is missing
    if cfg.caption.enabled and cfg.caption.engine == "vllm":
        from curation.models.vllm_engine import check_engine

        check_engine(cfg.caption)  # ConfigError when the engine's environment is missing or lacks vLLM
    for field, ref, kind in _model_files(cfg):
        if kind == "file" and not Path(ref).is_file():
            raise ConfigError(f"{field}: no such file: {ref}")
        if kind == "model" and not _model_available(ref):
            raise ConfigError(f"{field}: {ref!r} is neither a local folder nor in the Hugging Face cache "
                              "(nothing is downloaded at run time: download it first, or point at a folder)")


def _warn_untrainable(min_clip_s: float | None) -> None:
    """A set ``scenes.min_clip_s`` below the training window keeps clips the default trainer skips: allowed (another
    trainer may take them), said once."""
    w = TRAINING_WINDOW
    if min_clip_s is not None and any(min_clip_s * fps < w.shortest_clip(fps) for fps in COMMON_FPS):
        log.warning("scenes.min_clip_s=%g keeps clips shorter than the default trainer's shortest window (%d frames "
                    "at %g fps: %.2f-%.2f s by frame rate); it skips them, counted as too_short. Leave min_clip_s "
                    "unset to keep only clips it trains on", min_clip_s, min(w.frame_counts), w.fps,
                    min(w.shortest_clip(f) / f for f in COMMON_FPS), max(w.shortest_clip(f) / f for f in COMMON_FPS))


def _check_detector(field: str, d: DetectorConfig) -> None:
    if d.kind == "transnetv2":
        if "weights" in d.args and not Path(str(d.args["weights"])).is_file():
            raise ConfigError(f"{field}.args.weights: no such file: {d.args['weights']}")
        return
    from curation.video.detectors import check_scenedetect_args
    from curation.video.shots import SceneDetectDetector

    check_scenedetect_args(field, d.kind, d.args)
    try:
        SceneDetectDetector(d.kind, d.args, 25.0)
    except Exception as e:  # noqa: BLE001 - PySceneDetect rejects its own arguments with TypeError or ValueError
        raise ConfigError(f"{field}: {d.kind} does not take args {d.args}: {e}") from None


def _model_files(cfg: JobConfig) -> list[tuple[str, str, str]]:
    """(field, reference, "file" | "model") for every model the enabled stages load."""
    refs = []
    if cfg.aesthetic.enabled:
        refs += [("aesthetic.clip_model", cfg.aesthetic.clip_model, "model"), ("aesthetic.head", cfg.aesthetic.head, "file")]
    if cfg.caption.enabled:
        refs.append(("caption.model", cfg.caption.model, "model"))
        s = cfg.subjects
        if s.enabled:
            refs.append(("subjects.sam_checkpoint", s.sam_checkpoint, "file"))
            if s.detector == "yolo_world":
                refs += [("subjects.detector_weights", s.detector_weights, "file"), ("subjects.text_encoder", s.text_encoder, "model")]
            else:
                refs.append(("subjects.detector_weights", s.detector_weights, "model"))
    return refs


def _model_available(ref: str) -> bool:
    if Path(ref).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(ref, "config.json"), str)
    except ValueError:  # not a valid repo id either
        return False

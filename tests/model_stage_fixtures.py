"""Session fixtures for the model-stage tests: tiny models built once, real clips cut by the real CPU stages."""

import importlib.util
from pathlib import Path

import pytest

from curation.config import JobConfig, load_job
from curation.pipeline.row import Row
from curation.stages import CPU_STAGES
from tiny_models.curation_models import tiny_overrides

from .conftest import VIDEOS
from .pipeline_helpers import run_local

# Real photos shipped inside ultralytics (found without importing it: it must be imported after go_offline()).
ASSETS = Path(importlib.util.find_spec("ultralytics").origin).parent / "assets"


def job(paths: dict, *overrides: str) -> JobConfig:
    return load_job(None, tiny_overrides(paths) + list(overrides), input="unused", output="unused")


def run(stages, cfg: JobConfig, rows: list[dict]) -> list[dict]:
    return run_local(cfg, stages, rows=rows)


@pytest.fixture(scope="session")
def taught_mllm(tiny_paths) -> Path:
    """The tiny Qwen2-VL that gives FIXED_ANSWER to any clip (``tiny_models.curation_models``)."""
    return tiny_paths["mllm_fixed"]


@pytest.fixture(scope="session")
def clip_rows(tiny_paths) -> list[dict]:
    """The clips the real CPU stages cut from testvideo.mp4 (three shots), as encoded clip rows."""
    source = Row("source", str(VIDEOS / "testvideo.mp4"), {})
    # testvideo.mp4's copyright line is burned-in text: scored, kept (filters.max_text_area=null).
    cfg = job(tiny_paths, "encode.max_short_side=240", "filters.max_text_area=null")
    clips = [r for r in run(CPU_STAGES, cfg, [source]) if r.kind == "clip"]
    assert clips
    return clips

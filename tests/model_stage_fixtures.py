"""Session fixtures for the model-stage tests: tiny models built once, real clips cut by the real CPU stages."""

import importlib.util
from pathlib import Path

import pytest

from curation.config import JobConfig, load_job
from curation.stages import CPU_STAGES
from curation.tiny_models import save_tiny_models, tiny_overrides

from .conftest import VIDEOS

# Real photos shipped inside ultralytics (found without importing it: it must be imported after go_offline()).
ASSETS = Path(importlib.util.find_spec("ultralytics").origin).parent / "assets"
TAUGHT_ANSWER = '{"caption": "A person walks past a parked car.", "subjects": ["person", "car"]}'


def job(paths: dict, *overrides: str) -> JobConfig:
    return load_job(None, tiny_overrides(paths) + list(overrides), input="unused", output="unused")


def run(stages, cfg: JobConfig, rows: list[dict]) -> list[dict]:
    for stage_cls in stages:
        stage = stage_cls(cfg)
        stage.setup()
        rows = stage(rows)
    return rows


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict:
    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def taught_mllm(tiny_paths, tmp_path_factory) -> Path:
    """The tiny Qwen2-VL wired to give one valid JSON answer to any video, saved like a real checkpoint (random
    weights only ever produce unparsable text, and the chain needs a parsed answer). The answer is one added
    token; every layer's output projections are zeroed, so the last hidden state is the current token's normed
    embedding, and the LM head maps the prompt's last token -> answer -> end of turn. Everything else (vision
    tower, processor, batched generate) runs as in a real model."""
    import torch

    from curation.captioning import Captioner

    captioner = Captioner.load(job(tiny_paths).caption, "cpu")
    model, tokenizer = captioner.model, captioner.processor.tokenizer
    tokenizer.add_tokens([TAUGHT_ANSWER])
    model.resize_token_embeddings(len(tokenizer))
    text = model.model.language_model
    last = tokenizer(captioner.prompt)["input_ids"][-1]
    answer = tokenizer.convert_tokens_to_ids(TAUGHT_ANSWER)
    with torch.no_grad():
        for layer in text.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hidden = text.norm(model.get_input_embeddings().weight)
        model.lm_head.weight.zero_()
        model.lm_head.weight[answer] = hidden[last]
        model.lm_head.weight[tokenizer.eos_token_id] = hidden[answer]
    out = tmp_path_factory.mktemp("taught_qwen2vl")
    model.save_pretrained(out)
    captioner.processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def clip_rows(tiny_paths) -> list[dict]:
    """The clips the real CPU stages cut from testvideo.mp4 (three shots), as encoded clip rows."""
    source = {"kind": "source", "source_uri": str(VIDEOS / "testvideo.mp4"), "meta": {}, "mp4": None}
    clips = [r for r in run(CPU_STAGES, job(tiny_paths, "encode.max_short_side=240"), [source]) if r["kind"] == "clip"]
    assert clips
    return clips

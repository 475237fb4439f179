"""caption.engine vllm: the real vLLM engine (its CPU build, in .venv-vllm) serving the tiny Qwen2-VL, through the
caption stage and through a curation run on Ray; what fails for one clip fails that clip only."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from common.typed_config import ConfigError
from curation.models.vllm_engine import EngineError, check_engine, engine_python
from curation.run.preflight import check_job
from curation.stages.caption import CaptionPrepStage, CaptionStage
from tiny_models.curation_models import FIXED_ANSWER

from .conftest import ROOT, VIDEOS
from .model_stage_fixtures import clip_rows, job, run, taught_mllm  # noqa: F401
from .pipeline_helpers import check_contract

ENGINE = ["caption.engine=vllm", "caption.vllm.cpu_kv_cache_gb=1", "caption.vllm.max_model_len=1024",
          "caption.vllm.max_num_seqs=8", "caption.vllm.enforce_eager=true"]
CAPTION = json.loads(FIXED_ANSWER)


def engine_job(tiny_paths, taught_mllm, *overrides):
    return job(tiny_paths, f"caption.model={taught_mllm}", *ENGINE, *overrides)


@pytest.fixture(scope="module")
def served(tiny_paths, taught_mllm):
    """A caption stage whose vLLM server runs for the module's tests."""
    stage = CaptionStage(engine_job(tiny_paths, taught_mllm))
    stage.setup()
    yield stage
    stage.teardown()


@pytest.mark.slow
def test_the_engine_captions_real_clips_all_in_flight(served, clip_rows):
    prepared = run([CaptionPrepStage], served.cfg, clip_rows)
    before = dict(served.generate.usage)
    out = served(prepared)
    assert [r.kind for r in out] == ["clip"] * len(clip_rows)
    for r in out:
        assert (r.meta["caption"], r.meta["subject_labels"]) == (CAPTION["caption"], CAPTION["subjects"])
        assert r.frames is None
    usage = {k: served.generate.usage[k] - before[k] for k in before}
    assert usage["requests"] == len(clip_rows)
    # The instruction comes first in every prompt: the engine's prefix cache serves it after the first request.
    assert usage["cached_tokens"] > 0


@pytest.mark.slow
def test_a_clip_the_engine_refuses_or_cannot_read_loses_only_itself(served, clip_rows):
    good = run([CaptionPrepStage], served.cfg, clip_rows[:2])
    unreadable = good[0].replace(frames=[b"not a jpeg"] * 4)
    too_long = good[1].replace(frames=good[1].frames * 60)  # 240 frames: more tokens than max_model_len
    out = served([good[0], unreadable, too_long, good[1]])
    assert [r.kind for r in out] == ["clip", "error", "error", "clip"]
    assert out[2].meta["stage"] == "caption" and "HTTP 400" in out[2].meta["message"]
    assert out[2].meta["fault"] == "source"
    assert all(r.meta["caption"] == CAPTION["caption"] for r in (out[0], out[3]))


@pytest.mark.slow
def test_a_dead_engine_is_the_environments_fault_not_the_clips(served, clip_rows):
    prepared = run([CaptionPrepStage], served.cfg, clip_rows[:2])
    watchdog = served.generate.server.proc
    api_server, = [p for p in psutil.Process(watchdog.pid).children() if p.cmdline()[1:2] == ["-m"]]  # not the guard
    api_server.kill()
    watchdog.wait(timeout=30)
    out = served(prepared)
    assert [r.kind for r in out] == ["error", "error"]
    for r in out:
        assert r.meta["error_type"] == EngineError.__name__ and r.meta["fault"] == "environment"
        assert "exited" in r.meta["message"]
    assert gone(watchdog.pid)  # the engine core the API server left behind went with it


def group(pgid: int) -> list:
    members = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(p)
        except ProcessLookupError:
            pass
    return members


def gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while group(pgid) and time.time() < deadline:
        time.sleep(0.2)
    return not group(pgid)


def test_an_engine_goes_with_the_worker_that_started_it():
    """SIGKILL a worker and its children, as Ray does on a worker's exit, while its server runs under the watchdog
    (here a stand-in that spawns a child, as vLLM's API server spawns its engine core): the server and its child go
    too, so no engine outlives its actor."""
    server = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
    worker = ("import os, subprocess, sys, time\n"
              "from curation.models.vllm_engine import _WATCHDOG\n"
              "p = subprocess.Popen([sys.executable, '-c', _WATCHDOG, str(os.getpid()), sys.executable, '-c', "
              f"{server!r}], start_new_session=True)\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    pgid = int(proc.stdout.readline())
    deadline = time.time() + 20
    while len(group(pgid)) < 4 and time.time() < deadline:  # watchdog, its guard, server, the server's child
        time.sleep(0.1)
    assert len(group(pgid)) == 4
    proc.kill()
    os.kill(pgid, signal.SIGKILL)  # the watchdog: the worker's child
    proc.wait()
    assert gone(pgid)


def test_a_missing_engine_environment_is_one_config_error(tiny_paths, tmp_path):
    with pytest.raises(ConfigError, match="caption.vllm.python: no such interpreter"):
        check_job(job(tiny_paths, *ENGINE, f"caption.vllm.python={tmp_path / 'nothing' / 'python'}"))
    # An environment without vLLM (the project's own)
    with pytest.raises(ConfigError, match="cannot import vllm"):
        check_engine(job(tiny_paths, *ENGINE, f"caption.vllm.python={sys.executable}").caption)
    with pytest.raises(ConfigError, match="caption.model"):
        check_job(job(tiny_paths, *ENGINE, f"caption.model={tmp_path / 'no-model'}"))
    # Settings the engine would refuse for every clip (which would read as the clips' fault), or cannot place.
    with pytest.raises(ConfigError, match="caption.max_new_tokens=1024 leaves no room"):
        job(tiny_paths, *ENGINE, "caption.max_new_tokens=1024")
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 needs caption.num_gpus >= 2"):
        job(tiny_paths, *ENGINE, "caption.num_gpus=1", "caption.vllm.tensor_parallel_size=2")


def test_the_engine_environment_is_built_by_setup(tiny_paths):
    """make setup builds .venv-vllm, the default caption.vllm.python; the checks above pass on it."""
    cfg = job(tiny_paths, *ENGINE)
    assert engine_python(cfg.caption).is_file()
    check_engine(cfg.caption)


@pytest.mark.slow
def test_a_curation_run_on_the_engine_writes_each_clip_once_and_resumes(tiny_paths, taught_mllm, tmp_path, ray_local):
    """A source captioned by the engine inside a Ray worker (one task: one engine); every clip written once; a
    rerun skips it."""
    from curation.config import load_job
    from curation.run.runner import run as run_job
    from tiny_models.curation_models import tiny_overrides

    sources = [VIDEOS / "testvideo.mp4"]
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(map(str, sources)) + "\n")
    settings = [*tiny_overrides(tiny_paths, fixed_answer=True), *ENGINE, "subjects.enabled=false",
                "aesthetic.enabled=false", "scenes.min_clip_s=0.5", "filters.max_text_area=null", "ray.num_cpus=1",
                "scenes.detectors=[{kind: adaptive}]", "encode.preset=ultrafast", "encode.max_short_side=144"]
    cfg = load_job(None, settings, input=str(listing), output=str(tmp_path / "out"))
    assert run_job(cfg).sources_skipped == 0
    clips = check_contract(cfg.output)
    assert {r["source_uri"] for r in clips.values()} == {str(s) for s in sources}
    assert all(r["caption"] == CAPTION["caption"] for r in clips.values())
    assert run_job(cfg).sources_skipped == len(sources)
    assert check_contract(cfg.output) == clips

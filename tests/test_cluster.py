"""The cluster jobs as a user runs them: a running Ray cluster of two nodes (a head and a worker, two raylets on this
machine), the job submitted with `ray job submit`, input and output on the loopback S3 server. The CPU job loses
its worker node's raylet mid-job; the GPU job's shape (model stages on GPU actors) runs on a worker node that
declares a GPU (`ray start --num-gpus=1`: Ray schedules by resources, the tiny models run on the CPU)."""

import os
import re
import secrets
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import boto3
import psutil
import pytest

from common.storage import Storage, StorageConfig
from jobs.loopback_ray import loopback_ray_cluster
from jobs.loopback_s3 import free_port
from tiny_models.curation_models import tiny_overrides

from .conftest import ROOT, VIDEOS
from .pipeline_helpers import check_contract

RAY = str(Path(sys.executable).with_name("ray"))
INPUTS = ["counter.mp4", "testvideo.mp4", "fades.mp4", "issue-134-rotate.mp4"]
# Ray keeps 127.0.0.1 for single-node clusters and swaps it for the machine's address when nodes join; other
# loopback addresses it keeps, so both nodes stay on the loopback interface.
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def ray_cli(env, *args, timeout=120) -> str:
    out = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def raylet(node_ip: str) -> psutil.Process:
    (proc,) = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"]
               and p.info["cmdline"][0].endswith("/raylet") and f"--node_ip_address={node_ip}" in p.info["cmdline"]]
    return proc


@contextmanager
def ray_cluster(worker_gpus: int = 0):
    """A head (1 CPU) and a worker node (2 CPUs, ``worker_gpus`` GPUs) with token authentication, credentials in the
    nodes' environment (as the README asks)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}  # it forbids a second node
    dashboard = free_port()
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0",
               RAY_ADDRESS=f"http://127.0.0.1:{dashboard}")
    head = ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=1"]
    with loopback_ray_cluster(HEAD_IP, head, [(WORKER_IP, ["--num-cpus=2", f"--num-gpus={worker_gpus}"])], env):
        yield env


@pytest.fixture
def cluster(s3_server):
    with ray_cluster() as env:
        yield env


@pytest.fixture
def gpu_cluster(s3_server):
    with ray_cluster(worker_gpus=1) as env:
        yield env


def upload(s3_server, names: list[str]) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for bucket in ("cluster-raw", "cluster-datasets"):  # the session's S3 server is shared with other tests
        s3.create_bucket(Bucket=bucket)
    for name in names:
        s3.upload_file(str(VIDEOS / name), "cluster-raw", f"videos/{name}")


def submit(env, endpoint: str, job: str = "jobs/cluster_curation.yaml", output: str = "cinema",
           sets: list[str] = ()) -> str:
    extra = "".join(f" --set '{s}'" for s in sets)
    run = (f"cd {ROOT} && {sys.executable} -m curation run {job} --input s3://cluster-raw/videos/ "
           f"--output s3://cluster-datasets/{output} --set storage.endpoint_url={endpoint} "
           "--set 'scenes.detectors=[{kind: adaptive}]' --set filters.min_height=0 --set filters.min_motion=0 "
           "--set encode.preset=ultrafast --set encode.max_short_side=144 "
           "--set scenes.min_clip_s=0.5 --set shards.target_size_mb=0.3 --set ray.progress_interval_s=1 "
           "--set filters.max_text_area=null" + extra)  # the inputs show text: scored, kept
    deadline = time.time() + 120
    while True:  # the head's job agent may still be starting (as on any freshly started cluster): try again
        done = subprocess.run([RAY, "job", "submit", "--no-wait", "--", "bash", "-c", run], env=env,
                              capture_output=True, text=True, timeout=120)
        out = done.stdout + done.stderr
        if done.returncode == 0 or "No available agent" not in out or time.time() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, out
    return re.search(r"raysubmit_\w+", out).group(0)


def wait(env, job: str, timeout=300) -> str:
    """Until the job ends: its final state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = ray_cli(env, "job", "status", job)  # "Job '...' succeeded", "... failed", "... was stopped"
        for word, state in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("was stopped", "STOPPED")):
            if f"' {word}" in status:
                return state
        time.sleep(1)
    raise AssertionError(f"job {job} not done in {timeout} s:\n" + ray_cli(env, "job", "logs", job))


def kill_mid_job(env, job: str, node_ip: str, timeout=300) -> None:
    """Follow the job's log and, at its first progress line where a source is through its scene pass while not every
    source is done, kill the raylet of ``node_ip``: the job loses a node with work in flight. (The scene workers may
    finish their first sources within one progress interval, so a count of 1 may never show; and polling the log
    is too slow for a job of ten seconds.)"""
    mid_job = re.compile(rf"sources (\d+)/{len(INPUTS)} .*\| scenes [1-9]")
    follow = subprocess.Popen([RAY, "job", "logs", "--follow", job], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(timeout, follow.kill)
    watchdog.start()
    try:
        for line in follow.stdout:
            m = mid_job.search(line)
            if m and int(m[1]) < len(INPUTS):
                raylet(node_ip).kill()
                return
    finally:
        watchdog.cancel()
        follow.kill()
        follow.wait()
    raise AssertionError(f"job {job} ended (or ran past {timeout} s) before a node could be lost mid-job:\n"
                         + ray_cli(env, "job", "logs", job))


@pytest.mark.slow
def test_a_submitted_job_survives_losing_a_worker_node_and_a_resubmit_is_a_no_op(cluster, s3_server):
    env = cluster
    upload(s3_server, INPUTS)
    job = submit(env, s3_server, sets=["ray.progress_interval_s=0.5"])
    kill_mid_job(env, job, WORKER_IP)
    assert wait(env, job) == "SUCCEEDED", ray_cli(env, "job", "logs", job)
    logs = ray_cli(env, "job", "logs", job)
    assert f"sources: {len(INPUTS)} found, 0 skipped (done before), {len(INPUTS)} done, 0 failed" in logs, logs
    storage = Storage(StorageConfig(endpoint_url=s3_server))
    clips = check_contract("s3://cluster-datasets/cinema", storage)  # nothing lost, nothing twice
    assert len(clips) >= 5 and {c["source_uri"].rsplit("/", 1)[-1] for c in clips.values()} >= {"counter.mp4", "testvideo.mp4"}
    again = submit(env, s3_server)
    assert wait(env, again) == "SUCCEEDED"
    assert "nothing to do: every source is already done" in ray_cli(env, "job", "logs", again)


@pytest.mark.slow
def test_the_gpu_job_runs_its_model_stages_on_a_gpu_node(gpu_cluster, s3_server, tiny_paths):
    env = gpu_cluster
    upload(s3_server, INPUTS[:2])
    # The GPU job file as written, at the tiny models, every model stage asking for a whole GPU of the worker node.
    # Captions from the transformers engine: the vLLM engine's start (a third of this test's time with it) and a
    # curation run on it are tests/test_vllm_engine.py's.
    gpu = ["caption.num_gpus=1", "aesthetic.num_gpus=1", "subjects.num_gpus=1", "aesthetic.min_score=null",
           "caption.batch_size=4", "subjects.batch_size=4", "encode.max_short_side=null", "filters.min_width=0",
           "caption.engine=transformers"]
    job = submit(env, s3_server, "jobs/gpu_cluster_curation.yaml", "cinema-gpu",
                 [*tiny_overrides(tiny_paths, fixed_answer=True), *gpu])
    assert wait(env, job) == "SUCCEEDED", ray_cli(env, "job", "logs", job)
    clips = check_contract("s3://cluster-datasets/cinema-gpu", Storage(StorageConfig(endpoint_url=s3_server)))
    assert len(clips) >= 3 and all(c["caption"] and c["aesthetic"] is not None for c in clips.values())
    assert any(c["subjects"] for c in clips.values())

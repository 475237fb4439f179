"""Every job file in jobs/ loads through the project's own loaders; the cluster recipes point at real job files."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from curation.config import load_job
from training.config import load_train_job

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
CURATION_JOBS = ["demo_curation.yaml", "cluster_curation.yaml", "gpu_cluster_curation.yaml"]
# precompute reads the training job; the aligner job is the first stage of the paper's recipe.
TRAIN_JOBS = ["train_demo.yaml", "train_aligner_cluster.yaml", "train_cluster.yaml", "precompute_cluster.yaml"]


def test_every_yaml_job_file_is_covered():
    assert sorted(p.name for p in JOBS.glob("*.yaml")) == sorted([*CURATION_JOBS, *TRAIN_JOBS, "kuberay_curation.yaml"])


@pytest.mark.parametrize("name", CURATION_JOBS)
def test_curation_job_loads(name):
    load_job(str(JOBS / name))


def test_gpu_cluster_job_runs_the_real_models_on_gpus():
    cfg = load_job(str(JOBS / "gpu_cluster_curation.yaml"))
    assert cfg.ray.address == "auto" and cfg.output.startswith("s3://")
    assert cfg.caption.enabled and cfg.caption.model == "Qwen/Qwen2-VL-7B-Instruct" and cfg.caption.num_gpus == 1
    # Served by vLLM, from the environment make setup builds, on one GPU per engine.
    assert cfg.caption.engine == "vllm" and cfg.caption.vllm.python.endswith("/.venv-vllm/bin/python")
    assert cfg.caption.vllm.tensor_parallel_size == 1 and cfg.caption.vllm.structured_output
    s = cfg.subjects
    assert s.enabled and s.detector == "yolo_world" and s.sam_model_type == "vit_h"
    a = cfg.aesthetic
    # The LAION head scores only the embeddings of the CLIP it was trained on.
    assert a.enabled and a.clip_model == "openai/clip-vit-large-patch14"
    assert a.head == "/models/sac+logos+ava1-l14-linearMSE.pth"
    assert a.min_score is not None and 1 < a.min_score < 10
    # Equal GPU shares chain aesthetic, caption and subjects in one actor per GPU (curation.run.runner.chains).
    assert a.num_gpus == s.num_gpus == cfg.caption.num_gpus


@pytest.mark.parametrize("name", TRAIN_JOBS)
def test_training_job_loads(name):
    load_train_job(str(JOBS / name))


def test_demo_training_job_takes_its_endpoint_at_run_time():
    job = load_train_job(str(JOBS / "train_demo.yaml"), ["data.storage.endpoint_url=http://127.0.0.1:9000"])
    assert job.model.preset == "tiny" and job.data.urls == ["s3://cinema/dataset"]
    assert job.data.storage.endpoint_url == "http://127.0.0.1:9000" and job.parallel.param_dtype == "float32"


def test_cluster_training_job_is_full_size_on_shared_storage():
    job = load_train_job(str(JOBS / "train_cluster.yaml"))
    assert job.model.preset == "full" and all(u.startswith("s3://") for u in job.data.urls)
    # Every rank writes its part of a checkpoint and a rerun on any node must find it: an absolute shared path.
    assert Path(job.checkpoint.folder).is_absolute() and job.checkpoint.resume


def _job_files(command: str) -> list[Path]:
    return [ROOT / t for t in shlex.split(command) if t.startswith("jobs/") and t.endswith(".yaml")]


def test_kuberay_manifest_runs_an_existing_job_with_secret_credentials():
    manifest = yaml.safe_load((JOBS / "kuberay_curation.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    jobs = _job_files(spec["entrypoint"])
    assert jobs and all(p.is_file() for p in jobs)
    load_job(str(jobs[0]))
    cluster = spec["rayClusterSpec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in groups.values()]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        assert not [e for e in container.get("env", []) if e["name"].startswith("AWS_")]  # never inline


def test_slurm_script_launches_torchrun_per_node_on_the_cluster_job():
    script = JOBS / "train_slurm.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "#SBATCH --ntasks-per-node=1" in text and "srun" in text
    assert "--rdzv_backend=c10d" in text and "-m training" in text
    default_job = text.split('JOB="${JOB:-', 1)[1].split("}", 1)[0]
    load_train_job(str(ROOT / default_job))

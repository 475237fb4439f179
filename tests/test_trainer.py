"""The trainer on CPU with gloo: FSDP2 gradients, kill-and-resume from object storage, learning on curated clips."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psutil
import pytest

from jobs.loopback_s3 import free_port

from .data_fixtures import Clip, write_dataset
from .model_fixtures import tiny_checkpoints

ROOT = Path(__file__).resolve().parents[1]

# Tiny model, tiny clips: 9 frames at 32x32, two subjects at most.
TINY = ["model.preset=tiny", "data.num_frames=9", "data.target_fps=null", "data.buckets=[[32,32]]",
        "data.num_workers=0", "data.shuffle_buffer=4", "metrics.every=1",
        "metrics.tensorboard=false", "optim.warmup_steps=0", "parallel.param_dtype=float32"]


def torchrun(ranks: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}"]


def train_cmd(out: Path, *overrides: str, ranks: int = 2) -> list[str]:
    launcher = torchrun(ranks) if ranks > 1 else [sys.executable]
    sets = [a for o in (*TINY, f"model.checkpoints={tiny_checkpoints()}", f"out_dir={out}", *overrides)
            for a in ("--set", o)]
    return [*launcher, "-m", "training", *sets]


def metrics(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def samples(out: Path, rank: int) -> dict[tuple[int, int], list[str]]:
    """(step, micro) -> keys; a step seen twice (before a kill and after the resume) keeps its last record."""
    seen = {}
    for r in map(json.loads, (out / f"samples-rank{rank}.jsonl").read_text().splitlines()):
        seen[(r["step"], r["micro"])] = r["keys"]
    return seen


def test_fsdp_two_ranks_match_single_process_gradients():
    cmd = torchrun(2) + ["-m", "tests.fsdp_grad_worker", tiny_checkpoints()]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("GRADS-MATCH")), None)
    assert line, out.stdout[-2000:] + out.stderr[-3000:]
    fields = dict(kv.split("=") for kv in line.split()[1:])
    assert int(fields["params"]) > 50
    assert float(fields["max_diff"]) < 1e-6 * float(fields["scale"]) + 1e-7, line


@pytest.fixture(scope="module")
def s3_dataset(s3_server, tmp_path_factory):
    """Eight tiny clips in 4 shards, uploaded to a bucket on the loopback S3 server."""
    local = tmp_path_factory.mktemp("ds")
    write_dataset(local, [Clip(f"c{i:02d}", 32, 32, num_frames=9, num_subjects=i % 3, caption=f"a ball number {i}")
                          for i in range(8)], clips_per_shard=2)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="train")
    for f in local.rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), "train", f"ds/{f.relative_to(local)}")
    return s3_server, "s3://train/ds"


@pytest.fixture(scope="module")
def reference_run(s3_dataset, tmp_path_factory):
    """An uninterrupted 6-step run on 2 ranks, and the arguments it ran with."""
    endpoint, url = s3_dataset
    args = ["steps=6", "checkpoint.every=2", "data.batch_size=1", f"data.urls=[{url}]",
            f"data.endpoint_url={endpoint}", "optim.lr=1e-3"]
    out = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(train_cmd(out, *args), cwd=ROOT, check=True, capture_output=True, timeout=600)
    return out, args


@pytest.mark.parametrize("victim", ["every process", "rank 1 alone"])
def test_kill_and_resume_continues_the_same_losses_and_samples(reference_run, victim, tmp_path):
    reference, args = reference_run
    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(train_cmd(resumed, *args), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # Kill as soon as the run has checkpointed step 2: every process (launcher and both ranks), or one rank,
    # after which torchrun stops the other and fails.
    while not (resumed / "checkpoints" / "step-00000002").is_dir():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    launcher = psutil.Process(proc.pid)
    ranks = launcher.children(recursive=True)  # torchrun starts each rank in its own session
    if victim == "every process":
        for p in [*ranks, launcher]:
            p.kill()
    else:
        next(p for p in ranks if p.environ().get("RANK") == "1").kill()
    assert proc.wait(timeout=120) != 0
    last = max(int(p.name[5:]) for p in (resumed / "checkpoints").glob("step-????????"))
    assert last < 6, "the run finished before the kill"
    subprocess.run(train_cmd(resumed, *args), cwd=ROOT, check=True, capture_output=True, timeout=600)

    ref, res = metrics(reference), metrics(resumed)
    assert sorted(res) == list(range(last + 1, 7))  # the resumed run starts after the last complete checkpoint
    assert all(res[s] == pytest.approx(ref[s], rel=1e-5) for s in res), (ref, res)
    for rank in (0, 1):
        assert samples(resumed, rank) == samples(reference, rank)
    keys = {k for rank in (0, 1) for ks in samples(reference, rank).values() for k in ks}
    assert len(keys) >= 6  # 12 samples drawn from 8 clips, both ranks' shards
    assert (resumed / "trained.safetensors").stat().st_size > 10_000
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-00000002", "step-00000004", "step-00000006"]


def test_tiny_model_learns_on_curated_clips(curated, tmp_path):
    cfg, _, _ = curated
    out = tmp_path / "run"
    subprocess.run(train_cmd(out, "steps=40", "data.batch_size=4", f"data.urls=[{cfg.output}]", "optim.lr=3e-3",
                             "checkpoint.every=1000", "data.shuffle_buffer=16", ranks=1),
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    loss = metrics(out)
    first, last = sum(loss[s] for s in range(1, 6)) / 5, sum(loss[s] for s in range(36, 41)) / 5
    assert last < 0.75 * first, loss  # a trainer that does not learn stays near the first value (~1.5)
    assert (out / "loss_curve.png").stat().st_size > 5_000


def test_subject_crops_become_letterboxed_rgb_on_white():
    import torch

    from training.batch import subjects_for_model

    rgba = torch.zeros(1, 6, 4, 8, 8)
    rgba[0, 0, 0] = 1.0  # an opaque red square
    rgba[0, 0, 3] = 1.0
    rgba[0, 1, 1] = 1.0  # a fully transparent green one: background only
    out = subjects_for_model(rgba, torch.tensor([2]), 16, 32)
    assert out.shape == (1, 2, 3, 16, 32)  # padded slots beyond the largest count are dropped
    red, clear = out[0, 0], out[0, 1]
    assert torch.allclose(red[:, 8, 16], torch.tensor([1.0, -1.0, -1.0]), atol=1e-4)  # centre: red
    assert torch.allclose(red[:, 8, 2], torch.ones(3))  # letterbox margin: white
    assert torch.allclose(clear, torch.ones_like(clear), atol=1e-4)  # transparent: white everywhere


def test_a_checkpoint_cut_off_while_saving_is_never_loaded(tmp_path):
    from training.checkpoint import Checkpointer

    (tmp_path / "step-00000002").mkdir()
    partial = tmp_path / "step-00000004.partial"  # what a kill during a save leaves: files, but no rename
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"\0" * 100)
    assert Checkpointer(tmp_path, keep=3).latest() == tmp_path / "step-00000002"

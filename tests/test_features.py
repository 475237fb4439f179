"""Precomputed features (model.encoders=precomputed): the same losses as encoding every step, refused when made
with another model or clip shape, written exactly once by the Ray precompute job."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from .data_fixtures import Clip, write_dataset
from .model_fixtures import tiny_checkpoints
from .test_trainer import ROOT, SCRATCH, TINY, metrics, precompute_cmd, samples, train_cmd

# Condition dropout on half the samples: the unconditional path must match as well.
DROPOUT = f"model.overrides=[flow.condition_dropout=0.5, {SCRATCH}]"


def precompute(url: str, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run(precompute_cmd(f"data.urls=[{url}]", "precompute.batch_size=2", DROPOUT, *more), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Eight tiny clips with 0 to 2 subjects in 4 shards, and their features."""
    root = tmp_path_factory.mktemp("features") / "ds"
    write_dataset(root, [Clip(f"c{i:02d}", 32, 32, num_frames=9, num_subjects=i % 3, caption=f"a ball number {i}")
                         for i in range(8)], clips_per_shard=2)
    done = precompute(str(root))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 shard(s) written (8 clips" in done.stdout, done.stdout
    return root


def job(root: Path, *more: str):
    from training.config import load_train_job

    return load_train_job(None, [*TINY, f"model.checkpoints={tiny_checkpoints()}", f"data.urls=[{root}]", DROPOUT,
                                 *more])


def assert_losses_match(cfg, data, steps: int) -> None:
    """Batch by batch in one process: the same samples, the same generators, both condition-dropout paths."""
    from cinema_model.model import CinemaModel
    from training.batch import model_batch, sample_generators
    from training.data import ShardLoader, list_shards
    from training.data.features import open_features

    features = open_features(list_shards(data), cfg, data)
    torch.manual_seed(0)
    encoding = CinemaModel(cfg)
    torch.manual_seed(0)
    precomputed = CinemaModel(cfg, encoders=False, mllm_hidden_size=features.hidden_size)
    assert precomputed.mllm is None and precomputed.t5 is None and precomputed.vae is None
    cpu, b = torch.device("cpu"), data.batch_size
    pixels, feats = iter(ShardLoader(data)), iter(ShardLoader(data, features=features))
    subjects = drops = 0
    for step in range(steps):
        p, f = next(pixels), next(feats)
        assert p["key"] == f["key"] and torch.equal(p["num_subjects"], f["num_subjects"])
        subjects += int(p["num_subjects"].sum())
        for seed in range(3):
            drops += sum(float(torch.rand(1, generator=g)) < 0.5 for g in sample_generators(seed, step, 0, 0, b))
            want = encoding.loss(model_batch(p, cpu), sample_generators(seed, step, 0, 0, b))["loss"].detach()
            got = precomputed.loss(model_batch(f, cpu, features), sample_generators(seed, step, 0, 0, b))["loss"]
            assert float(got.detach()) == pytest.approx(float(want), rel=1e-5, abs=1e-6), (step, seed)
    assert subjects > 0 and 0 < drops < 3 * steps * b  # subjects, dropped and kept samples were all compared


def test_a_batch_of_features_gives_the_loss_of_encoding_it(dataset):
    from cinema_model.config import preset

    j = job(dataset, "data.batch_size=4", "data.shuffle_buffer=1")
    assert_losses_match(preset("tiny", tiny_checkpoints(), ["flow.condition_dropout=0.5"]), j.data, 4)


def test_the_t5_ablation_precomputes_t5_features(tmp_path):
    """Conditioning "t5": the stored states are T5's padded features; made in-process by the actors' code."""
    from cinema_model.config import preset
    from training.data import list_shards
    from training.precompute.encode import FeatureEncoder
    from training.precompute.runner import plan

    write_dataset(tmp_path, [Clip(f"c{i}", 32, 32, num_frames=9, num_subjects=i % 3, caption=f"ball {i}")
                             for i in range(4)], clips_per_shard=2)
    overrides = ["ablation.conditioning=t5", "flow.condition_dropout=0.5"]
    j = job(tmp_path, "data.batch_size=4", "data.shuffle_buffer=1", f"model.overrides=[{', '.join([*overrides, SCRATCH])}]")
    todo = plan(j, list_shards(j.data))
    encoder = FeatureEncoder(j, "cpu")
    encoder.write_uncond(str(tmp_path))
    assert [encoder.shard(s)["samples"] for s in todo] == [2, 2]
    assert_losses_match(preset("tiny", tiny_checkpoints(), overrides), j.data, 1)


def test_two_ranks_train_on_features_with_the_losses_of_encoding(dataset, tmp_path):
    """2 gloo ranks, 3 steps, batch 2 per rank: per-step losses and sample keys of the two modes agree."""
    args = ["steps=3", "checkpoint.every=3", "data.batch_size=2", f"data.urls=[{dataset}]", "optim.lr=1e-3", DROPOUT]
    runs = {}
    for mode in ("replicated", "precomputed"):
        out = tmp_path / mode
        done = subprocess.run(train_cmd(out, *args, f"model.encoders={mode}"), cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        runs[mode] = out
    base, feats = metrics(runs["replicated"]), metrics(runs["precomputed"])
    assert sorted(base) == sorted(feats) == [1, 2, 3]
    assert all(feats[s] == pytest.approx(base[s], rel=1e-5) for s in base), (base, feats)
    for rank in (0, 1):
        assert samples(runs["precomputed"], rank) == samples(runs["replicated"], rank)


def test_features_of_another_model_or_clip_shape_are_refused(dataset, tmp_path):
    from cinema_model.config import preset
    from training.config import JobError
    from training.data import list_shards
    from training.data.features import open_features
    from training.precompute.runner import plan

    def check(*more: str, overrides=("flow.condition_dropout=0.5",)):
        j = job(dataset, *more)
        return open_features(list_shards(j.data), preset("tiny", tiny_checkpoints(), list(overrides)), j.data)

    assert len(check().shards) == 4  # the job they were made for
    with pytest.raises(JobError, match=r"another model.*buckets: \[\[32, 32\]\] \(features\) != \[\[32, 48\]\]"):
        check("data.buckets=[[32,48]]")
    with pytest.raises(JobError, match=r"frames: \[9\] \(features\) != \[9, 17\]"):
        check("data.frames=[9,17]")
    with pytest.raises(JobError, match=r"encoder.instruction: .* != \"Describe {caption}\""):
        check(overrides=["mllm.instruction=Describe {caption}"])
    with pytest.raises(JobError, match=r"conditioning: \"mllm\" \(features\) != \"t5\""):
        check(overrides=["ablation.conditioning=t5"])
    with pytest.raises(JobError, match="another model"):  # the precompute job refuses to mix them in too
        plan(job(dataset, "data.target_fps=4"), list_shards(job(dataset).data))
    other = tmp_path / "plain"
    write_dataset(other, [Clip("x", 32, 32, num_frames=9)], clips_per_shard=1)
    with pytest.raises(JobError, match=r"no precomputed features .*python -m training.precompute"):
        open_features(list_shards(job(other).data), preset("tiny", tiny_checkpoints()), job(other).data)


def test_the_trainer_refuses_features_of_another_shape_with_one_message(dataset, tmp_path):
    done = subprocess.run(train_cmd(tmp_path / "run", "steps=1", f"data.urls=[{dataset}]", "model.encoders=precomputed",
                                    "data.buckets=[[32,48]]", ranks=1), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    assert "error:" in done.stderr and "made with another model or clip shape" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_precompute_is_exactly_once(dataset, tmp_path):
    """A rerun is a no-op; a run killed mid-shard (its tar half-written, no marker, a temporary left) is redone
    for that shard alone, to the same bytes, and the trainer refuses the set until then."""
    from cinema_model.config import preset
    from training.config import JobError
    from training.data import list_shards
    from training.data.features import open_features

    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    tars = sorted((root / "features").glob("*.tar"))
    before = {p.name: p.read_bytes() for p in tars}
    stamps = {p: p.stat().st_mtime_ns for p in (root / "features").rglob("*") if p.is_file()}
    again = precompute(str(root))
    assert again.returncode == 0 and "4 with committed features, 0 to do" in again.stdout, again.stdout
    assert {p: p.stat().st_mtime_ns for p in (root / "features").rglob("*") if p.is_file()} == stamps

    victim = tars[1]
    (root / "features" / "done" / (victim.stem + ".json")).unlink()  # killed before its marker
    victim.write_bytes(before[victim.name][: len(before[victim.name]) // 3])
    (root / "features" / f".{victim.name}.0123abcd.tmp").write_bytes(b"half")
    j = job(root)
    with pytest.raises(JobError, match=r"1 shard\(s\) have no committed features"):
        open_features(list_shards(j.data), preset("tiny", tiny_checkpoints(), ["flow.condition_dropout=0.5"]), j.data)
    redo = precompute(str(root))
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert "3 with committed features, 1 to do" in redo.stdout and "1 shard(s) written (2 clips" in redo.stdout
    assert {p.name: p.read_bytes() for p in sorted((root / "features").glob("*.tar"))} == before
    assert not list((root / "features").glob(".*.tmp"))
    for p, stamp in stamps.items():  # the other shards were not touched
        if p.name not in (victim.name, victim.stem + ".json"):
            assert p.stat().st_mtime_ns == stamp, p


def test_one_precompute_driver_per_features_folder(dataset, tmp_path):
    """As in curation: while another driver holds a dataset's features, precompute is refused with the holder named
    and writes nothing; an encoder actor whose driver's lease was taken over commits nothing and says so."""
    import os

    from common.lease import Lease
    from common.storage import Storage, StorageConfig
    from training.precompute.runner import ShardActor

    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    marker = sorted((root / "features" / "done").glob("*.json"))[0]
    marker.unlink()
    tar = root / "features" / (marker.stem + ".tar")
    tar.unlink()
    other = Lease(Storage(StorageConfig()), str(root / "features"), settle_s=0)
    other.acquire()
    try:
        refused = precompute(str(root))
        assert refused.returncode == 4, refused.stderr[-3000:]
        assert f"in use by another driver (pid {os.getpid()} on" in refused.stderr, refused.stderr
        actor = ShardActor(job(root, "precompute.batch_size=2"), {str(root): "a driver that lost the lease"})
        row = actor({"shard": [str(root / "shards" / tar.name)]})
        assert row["lease_lost"] == [True] and "in use by another driver" in row["error"][0], row
    finally:
        other.release()
    assert not marker.exists() and not tar.exists() and not list((root / "features").glob(".*.tmp"))


def test_the_cluster_job_file_loads_for_both_commands():
    from training.config import load_train_job

    job = load_train_job(str(ROOT / "jobs" / "precompute_cluster.yaml"))
    assert (job.model.encoders, job.precompute.num_gpus, job.precompute.address) == ("precomputed", 1.0, "auto")

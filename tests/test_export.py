"""python -m training export: a DCP checkpoint of a tiny run as the file the run itself exports, on one process."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from training.__main__ import main as training_main
from training.checkpoint import Checkpointer

from .data_fixtures import Clip, write_dataset
from .test_checkpoint_safety import Payload, recommit, state
from .test_trainer import ROOT, train_cmd


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step single-process run with an EMA, checkpointed at its last step (what it exports at the end)."""
    tmp = tmp_path_factory.mktemp("export")
    write_dataset(tmp / "ds", [Clip(f"c{i}", 32, 32, num_frames=9, num_subjects=i % 3) for i in range(4)],
                  clips_per_shard=2)
    out = tmp / "run"
    done = subprocess.run(train_cmd(out, "steps=2", "checkpoint.every=2", f"data.urls=[{tmp / 'ds'}]",
                                    "data.shuffle_buffer=1", "optim.lr=1e-2", "optim.ema_decay=0.5", ranks=1),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.mark.parametrize("ema", [False, True])
def test_export_of_a_checkpoint_equals_what_the_run_exported_at_that_step(tiny_run, tmp_path, ema):
    out = tmp_path / "exported.safetensors"
    args = [str(tiny_run / "checkpoints" / "step-00000002"), str(out)] + (["--ema"] if ema else [])
    assert training_main(["export", *args]) == 0
    expected = load_file(tiny_run / ("trained.ema.safetensors" if ema else "trained.safetensors"))
    got = load_file(out)
    assert sorted(got) == sorted(expected) and any(k.startswith("dit.") for k in got)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    if ema:  # the EMA is not the weights (decay 0.5 over 2 steps)
        weights = load_file(tiny_run / "trained.safetensors")
        assert any(not torch.equal(got[k], weights[k]) for k in got)
    with safe_open(str(out), "pt") as f:
        about = f.metadata()
    assert (about["preset"], about["stage"], about["step"]) == ("tiny", "cinema", "2")
    assert out.stat().st_mode & 0o777 == 0o644


def test_export_runs_as_a_command_without_a_process_group(tiny_run, tmp_path):
    out = tmp_path / "w.safetensors"
    done = subprocess.run([sys.executable, "-m", "training", "export",
                           str(tiny_run / "checkpoints" / "step-00000002"), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_file(out).keys() == load_file(tiny_run / "trained.safetensors").keys()


def test_export_refuses_a_damaged_or_planted_checkpoint_and_a_missing_ema(tmp_path, capsys):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=3).save(state())  # no EMA in this one
    assert training_main(["export", str(ckpt), str(tmp_path / "a.safetensors"), "--ema"]) == 2
    assert "holds no ema weights" in capsys.readouterr().err

    marker = tmp_path / "pwned"
    (ckpt / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    assert training_main(["export", str(ckpt), str(tmp_path / "b.safetensors")]) == 2
    assert "damaged" in capsys.readouterr().err  # by its commit record
    recommit(ckpt)  # someone who can write the folder can rewrite the record too
    assert training_main(["export", str(ckpt), str(tmp_path / "b.safetensors")]) == 2
    assert "not plain DCP metadata" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "b.safetensors").exists()

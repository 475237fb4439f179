"""Checkpoints that were tampered with, damaged, misnamed or copied in from another run: nothing they hold is executed,
a damaged latest one is passed over for the one before it, another run's is refused unless asked for, the step and
run come from the commit record rather than the folder's name, and parts can be left out of a resume. One process, no
process group: DCP runs locally."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from training.checkpoint import COMMIT, Checkpointer, TrainState, _file_record, export_consolidated
from training.config import JobError


def state(seed: int = 0, step: int = 2) -> TrainState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    s = TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), rank=0)
    s.step, s.data = step, {"position": step * 10}
    return s


class Payload:
    """What an attacker plants: unpickling it calls open(marker, "w"), creating the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def recommit(path: Path, **changes) -> None:
    """Rewrite the commit record to match the files, with ``changes`` to its other entries: what someone who can write
    the folder can do too."""
    names = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != COMMIT)
    record = {**json.loads((path / COMMIT).read_text()), **changes}
    (path / COMMIT).write_text(json.dumps({**record, "files": {n: _file_record(path / n) for n in names}}))


def another_runs(folder: Path, name: str, step: int) -> Path:
    """A checkpoint saved at ``step`` by another run on 2 ranks (a valid commit record), copied into this run's
    ``folder`` as ``name``."""
    saved = Checkpointer(folder.parent / "another-run", keep=3).save(state(seed=7, step=step))
    recommit(saved, world_size=2)
    return Path(shutil.copytree(saved, folder / name))


def warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "training" and r.levelno == logging.WARNING)


def test_a_planted_metadata_pickle_is_refused_without_running(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=3).save(state())
    marker = tmp_path / "pwned"
    (ckpt / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    recommit(ckpt)
    assert Checkpointer(tmp_path / "ckpt", keep=3).latest() == ckpt  # intact by its record: only loading can tell
    with pytest.raises(JobError, match=r"refused: its metadata is not plain DCP metadata \(it refers to io\.open"):
        Checkpointer(tmp_path / "ckpt", keep=3).load(state(seed=1), ckpt)
    assert not marker.exists()


def test_a_planted_value_entry_is_refused_without_running(tmp_path):
    import torch.distributed.checkpoint as dcp

    ckpt = Checkpointer(tmp_path / "ckpt", keep=3).save(state())
    marker = tmp_path / "pwned"
    # DCP saves every non-tensor value as a pickle: here the step's is the payload.
    dcp.save({"train": {**state().to_save(), "step": Payload(marker)}}, checkpoint_id=str(ckpt))
    recommit(ckpt)
    with pytest.raises(JobError, match="entry 'train.step' refused: it is not a plain value"):
        Checkpointer(tmp_path / "ckpt", keep=3).load(state(seed=1), ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated .distcp", "truncated .metadata", "flipped byte", "no commit record"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog, damage):
    checkpointer = Checkpointer(tmp_path, keep=3)
    good = checkpointer.save(state(step=2))
    bad = checkpointer.save(state(step=4))
    if damage == "no commit record":
        (bad / COMMIT).unlink()
    else:
        name = ".metadata" if "metadata" in damage else "__0_0.distcp"
        data = (bad / name).read_bytes()
        (bad / name).write_bytes(data[: len(data) // 2] if "truncated" in damage else data[:-1] + bytes([data[-1] ^ 1]))
    with caplog.at_level(logging.WARNING, logger="training"):
        assert checkpointer.latest() == good
    expected = {"truncated .distcp": r"__0_0\.distcp has \d+ bytes, \d+ were written",
                "truncated .metadata": r"\.metadata has \d+ bytes, \d+ were written",
                "flipped byte": r"__0_0\.distcp does not match its SHA-256",
                "no commit record": r"commit\.json missing or unreadable"}[damage]
    message = next(r.getMessage() for r in caplog.records if r.name == "training" and "is damaged" in r.getMessage())
    assert str(bad) in message
    assert re.search(expected, message), message
    resumed = state(seed=1)
    checkpointer.load(resumed, good)
    assert resumed.step == 2 and resumed.saved_data == [{"position": 20}]


def test_parts_excluded_from_loading_are_left_as_they_are(tmp_path):
    saved = state(step=6)
    ckpt = Checkpointer(tmp_path, keep=3).save(saved)
    fresh = state(seed=1, step=0)
    fresh.optimizer.state.clear()  # a new run's AdamW: no moments yet
    Checkpointer(tmp_path, keep=3).load(fresh, ckpt, exclude={"optimizer", "data"})
    for a, b in zip(fresh.model.parameters(), saved.model.parameters()):
        assert torch.equal(a, b)  # the weights loaded
    assert fresh.step == 6 and fresh.scheduler.last_epoch == saved.scheduler.last_epoch
    assert not fresh.optimizer.state  # AdamW's moments start afresh
    assert fresh.saved_data is None  # so does the data stream
    everything = state(seed=1, step=0)
    Checkpointer(tmp_path, keep=3).load(everything, ckpt)
    moments = [everything.optimizer.state[p]["exp_avg"] for p in everything.model.parameters()]
    assert all(torch.equal(m, saved.optimizer.state[p]["exp_avg"]) for m, p in zip(moments, saved.model.parameters()))
    assert everything.saved_data == [{"position": 60}]


def test_a_checkpoint_with_param_groups_by_position_still_resumes(tmp_path, monkeypatch):
    """Checkpoints written before AdamW's state was keyed by parameter name load as they were written, and the next
    save is keyed by name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    import training.checkpoint
    from training.checkpoint import SafeReader

    saved = state(step=4)
    with monkeypatch.context() as m:
        m.setattr(training.checkpoint, "_OPTIM_BY_NAME", StateDictOptions())  # the layout those checkpoints have
        old = Checkpointer(tmp_path, keep=3).save(saved)
    assert "train.optim.param_groups.0.lr" in SafeReader(old).read_metadata().state_dict_metadata
    resumed = state(seed=1, step=0)
    Checkpointer(tmp_path, keep=3).load(resumed, old)
    for p, q in zip(resumed.model.parameters(), saved.model.parameters()):
        assert torch.equal(resumed.optimizer.state[p]["exp_avg"], saved.optimizer.state[q]["exp_avg"])
    resumed.step = 6
    new = Checkpointer(tmp_path, keep=3).save(resumed)
    keys = SafeReader(new).read_metadata().state_dict_metadata
    assert "train.optim.param_groups.0.weight.lr" in keys and "train.optim.param_groups.0.lr" not in keys


def test_exported_weights_are_world_readable_and_say_what_they_are(tmp_path):
    from safetensors import safe_open

    old = os.umask(0o022)
    try:
        export_consolidated(nn.Linear(2, 2), tmp_path / "trained.safetensors", metadata={"preset": "tiny", "step": "3"})
    finally:
        os.umask(old)
    assert (tmp_path / "trained.safetensors").stat().st_mode & 0o777 == 0o644
    with safe_open(str(tmp_path / "trained.safetensors"), "pt") as f:
        assert f.metadata() == {"preset": "tiny", "step": "3"}


def test_another_runs_checkpoint_is_refused_not_resumed_from(tmp_path):
    """Copied in at step 4 under the name of step 10, into a run that has no checkpoint of its own yet."""
    planted = another_runs(tmp_path / "ckpt", "step-00000010", step=4)
    with pytest.raises(JobError) as refused:
        Checkpointer(tmp_path / "ckpt", keep=3).latest()
    message = str(refused.value)
    assert f"checkpoint {planted} is of another run" in message and "step 4, world size 2" in message
    assert f"checkpoint.resume_from={planted}" in message and "\n" not in message


def test_this_runs_checkpoints_win_over_another_runs_named_later(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=3)
    checkpointer.save(state(step=2))
    own = checkpointer.save(state(step=6))
    planted = another_runs(tmp_path / "ckpt", "step-00000010", step=4)
    with caplog.at_level(logging.WARNING, logger="training"):
        assert Checkpointer(tmp_path / "ckpt", keep=3).latest() == own  # on every rerun, not only the first
    assert f"checkpoint {planted} is of another run" in warnings(caplog)
    resumed = state(seed=1, step=0)
    checkpointer.load(resumed, own)
    assert resumed.step == 6


def test_this_runs_checkpoint_from_another_world_size_is_resumed(tmp_path):
    """The run's identity is its output folder's, not its world size: a resume on other ranks reshards it."""
    checkpointer = Checkpointer(tmp_path, keep=3)
    checkpointer.save(state(step=2))
    wider = checkpointer.save(state(step=4))
    recommit(wider, world_size=2)
    assert Checkpointer(tmp_path, keep=3).latest() == wider


def test_resume_from_takes_another_runs_checkpoint_while_this_run_has_none(tmp_path):
    planted = another_runs(tmp_path / "ckpt", "step-00000010", step=4)
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=1)
    assert checkpointer.latest(resume_from=planted) == planted
    resumed = state(seed=1, step=0)
    checkpointer.load(resumed, planted)
    resumed.step = 6
    own = checkpointer.save(resumed)  # this run's from now on
    assert Checkpointer(tmp_path / "ckpt", keep=1).latest(resume_from=planted) == own  # a rerun goes on from its own
    assert planted.is_dir()  # another run's is never pruned
    (planted / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(JobError, match=r"resume_from=.*0010 is damaged, not resuming from it: __0_0.distcp has 1 "):
        Checkpointer(tmp_path / "fresh", keep=1).latest(resume_from=planted)
    with pytest.raises(JobError, match=r"checkpoint.resume_from=.*nowhere: no such checkpoint folder"):
        Checkpointer(tmp_path / "fresh", keep=1).latest(resume_from=tmp_path / "nowhere")


@pytest.mark.parametrize("intruder", ["another run's", "no commit record"])
def test_pruning_counts_only_this_runs_verified_checkpoints(tmp_path, caplog, intruder):
    """keep=1 with a folder named later than every checkpoint the run writes: each new checkpoint survives its own
    pruning, and the rerun resumes from it (not from step 1)."""
    if intruder == "another run's":
        planted = another_runs(tmp_path / "ckpt", "step-00000010", step=4)
    else:
        planted = Checkpointer(tmp_path / "elsewhere", keep=1).save(state(step=10))
        (planted / COMMIT).unlink()
        planted = Path(shutil.copytree(planted, tmp_path / "ckpt" / planted.name))
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=1)
    with caplog.at_level(logging.WARNING, logger="training"):
        first = checkpointer.save(state(step=2))
        assert first.is_dir()
        second = checkpointer.save(state(step=4))
    assert second.is_dir() and not first.exists() and planted.is_dir()
    assert str(planted) in warnings(caplog) and "left in place" in warnings(caplog)
    assert Checkpointer(tmp_path / "ckpt", keep=1).latest() == second


def test_a_damaged_checkpoint_does_not_count_toward_keep(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path, keep=2)
    good = checkpointer.save(state(step=2))
    damaged = checkpointer.save(state(step=4))
    (damaged / "__0_0.distcp").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="training"):
        new = Checkpointer(tmp_path, keep=2).save(state(step=6))
    assert good.is_dir() and new.is_dir() and damaged.is_dir()  # two good ones kept; the damaged one left
    assert f"checkpoint {damaged} is damaged" in warnings(caplog)


def test_the_latest_is_chosen_by_recorded_step_not_by_name(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=2)
    four = checkpointer.save(state(step=4))
    six = checkpointer.save(state(step=6)).rename(tmp_path / "step-00000001")  # misnamed within the run
    assert Checkpointer(tmp_path, keep=2).latest() == six
    eight = Checkpointer(tmp_path, keep=2).save(state(step=8))
    assert six.is_dir() and eight.is_dir() and not four.exists()  # pruned by recorded step: 4 is the oldest


def test_a_record_whose_step_is_not_the_checkpoints_is_refused(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=3).save(state(step=6))
    recommit(ckpt, step=9)  # the record says 9, what DCP holds says 6
    assert Checkpointer(tmp_path, keep=3).latest() == ckpt  # intact by its record: only loading can tell
    with pytest.raises(JobError, match=r"holds step 6 but its commit record says step 9"):
        Checkpointer(tmp_path, keep=3).load(state(seed=1, step=0), ckpt)


def test_two_folders_with_the_same_recorded_step(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=2)
    four = checkpointer.save(state(step=4))
    six = checkpointer.save(state(step=6))
    copy = Path(shutil.copytree(six, tmp_path / "step-00000007"))
    assert Checkpointer(tmp_path, keep=2).latest() in (six, copy)
    eight = Checkpointer(tmp_path, keep=2).save(state(step=8))
    assert eight.is_dir() and not four.exists() and six.is_dir() != copy.is_dir()  # one step 6 kept, with 8


def test_a_save_never_replaces_a_folder_of_another_run_under_its_name(tmp_path):
    planted = another_runs(tmp_path / "ckpt", "step-00000006", step=4)
    before = (planted / COMMIT).read_text()
    own = Checkpointer(tmp_path / "ckpt", keep=3).save(state(step=6))
    assert own != planted and own.name.startswith("step-00000006") and (planted / COMMIT).read_text() == before
    assert Checkpointer(tmp_path / "ckpt", keep=3).latest() == own


def test_a_record_written_before_records_named_their_run_is_another_runs(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=3)
    old = checkpointer.save(state(step=4))
    record = json.loads((old / COMMIT).read_text())
    (old / COMMIT).write_text(json.dumps({"files": record["files"]}))  # what earlier versions wrote
    with pytest.raises(JobError, match=r"is of another run \(a record that names no run\)"):
        Checkpointer(tmp_path, keep=3).latest()
    assert Checkpointer(tmp_path, keep=3).latest(resume_from=old) == old


def test_the_run_is_named_once_by_its_output_folder(tmp_path):
    first = Checkpointer(tmp_path / "a" / "ckpt", keep=1, run_dir=tmp_path / "a").run
    assert Checkpointer(tmp_path / "shared", keep=1, run_dir=tmp_path / "a").run == first
    assert Checkpointer(tmp_path / "shared", keep=1, run_dir=tmp_path / "b").run != first  # one folder, two runs
    (tmp_path / "a" / "run.json").write_text("{")
    with pytest.raises(JobError, match=r"a/run.json is unreadable"):
        Checkpointer(tmp_path / "a" / "ckpt", keep=1, run_dir=tmp_path / "a")


@pytest.mark.slow
def test_the_trainer_says_why_it_does_not_train(tmp_path):
    """Started on a checkpoint at step 10 with steps=5, the trainer says there is nothing to do and exits 0; on a
    folder holding only another run's checkpoint it stops with one line and exit 2. Neither builds a model (the
    checkpoints here are not of the tiny model)."""
    from .data_fixtures import Clip, write_dataset
    from .test_trainer import ROOT, train_cmd

    write_dataset(tmp_path / "ds", [Clip(f"c{i}", 32, 32, num_frames=9) for i in range(2)], clips_per_shard=2)

    def train(out: Path, steps: int) -> subprocess.CompletedProcess:
        return subprocess.run(train_cmd(out, f"steps={steps}", f"data.urls=[{tmp_path / 'ds'}]", ranks=1),
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    ckpt = Checkpointer(tmp_path / "run" / "checkpoints", keep=3, run_dir=tmp_path / "run").save(state(step=10))
    done = train(tmp_path / "run", 10)  # one launch each: the case steps < 10 is the same comparison
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"nothing to do: checkpoint {ckpt} is at step 10 >= steps=10 (raise steps to train on)" \
        in done.stdout.splitlines(), done.stdout[-3000:]
    assert not (tmp_path / "run" / "trained.safetensors").exists()
    foreign = another_runs(tmp_path / "run2" / "checkpoints", "step-00000010", step=4)
    done = train(tmp_path / "run2", 20)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert f"checkpoint {foreign} is of another run" in errors[0] and f"resume_from={foreign}" in errors[0]

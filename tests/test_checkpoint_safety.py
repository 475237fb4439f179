"""Checkpoints that were tampered with or damaged: nothing they hold is executed, a damaged latest one is passed over
for the one before it, and parts can be left out of a resume. One process, no process group: DCP runs locally."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
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


def recommit(path: Path) -> None:
    """Rewrite the commit record to match the files: what someone who can write the folder can do too."""
    names = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != COMMIT)
    (path / COMMIT).write_text(json.dumps({"files": {n: _file_record(path / n) for n in names}}))


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

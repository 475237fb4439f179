"""DCP checkpoints of a training run: trained weights, optimizer, schedule, step and each rank's data position.

A checkpoint is written to ``step-NNNNNNNN.partial`` and renamed to ``step-NNNNNNNN`` by rank 0 once every rank has
finished writing, so a run killed during a save leaves only a ``.partial`` folder, which is never loaded and is
removed by the next save. The last ``keep`` complete checkpoints are kept. The folder must be shared by all ranks
(a local disk on one node, a shared filesystem across nodes).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

log = logging.getLogger("training")

_NAME = re.compile(r"^step-(\d{8})$")


class TrainState(Stateful):
    """What DCP saves besides tensors: the step, the LR schedule and this rank's data position. The data position
    differs per rank, so it is stored under a per-rank key."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, rank: int,
                 ema: dict[str, torch.Tensor] | None = None):
        self.model, self.optimizer, self.scheduler, self.rank, self.ema = model, optimizer, scheduler, rank, ema
        self.step = 0
        self.data: dict = {}

    def state_dict(self) -> dict:
        model, optim = get_model_state_dict(self.model), get_optimizer_state_dict(self.model, self.optimizer)
        state = {"model": model, "optim": optim, "step": self.step, "scheduler": self.scheduler.state_dict(),
                 f"data_rank{self.rank}": json.dumps(self.data)}  # a leaf: DCP restores leaves, not empty dicts
        if self.ema is not None:
            state["ema"] = self.ema  # loaded in place by DCP
        return state

    def load_state_dict(self, state: dict) -> None:
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.optimizer, state["optim"])
        self.step = state["step"]
        self.scheduler.load_state_dict(state["scheduler"])
        self.data = json.loads(state[f"data_rank{self.rank}"])


class Checkpointer:
    def __init__(self, folder: str | Path, keep: int):
        self.folder, self.keep = Path(folder), keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and _NAME.match(p.name))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, state: TrainState) -> Path:
        final = self.folder / f"step-{state.step:08d}"
        partial = final.with_name(final.name + ".partial")
        rank0 = not dist.is_initialized() or dist.get_rank() == 0
        if rank0:
            for stale in self.folder.glob("*.partial"):  # left by a run killed while saving
                shutil.rmtree(stale, ignore_errors=True)
            partial.mkdir(parents=True, exist_ok=True)
        _barrier()
        dcp.save({"train": state}, checkpoint_id=str(partial))
        _barrier()  # every rank has written its part: the checkpoint is complete
        if rank0:
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, state: TrainState, path: Path) -> None:
        dcp.load({"train": state}, checkpoint_id=str(path))
        log.info("resumed from %s at step %d", path, state.step)


def export_consolidated(model: nn.Module, path: str | Path, ema: dict[str, torch.Tensor] | None = None) -> None:
    """One plain safetensors file of the full (unsharded) trained weights, written by rank 0: what
    ``python -m cinema_model generate --weights`` loads. With an EMA, its weights go to ``*.ema.safetensors``."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    _save_rank0(full, Path(path))
    if ema is not None:
        gathered = {clean_fqn(k): (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in ema.items()}
        _save_rank0(gathered, Path(path).with_suffix(".ema.safetensors"))
    _barrier()


def _save_rank0(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    if not dist.is_initialized() or dist.get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def clean_fqn(name: str) -> str:
    """A parameter's name without the wrappers activation checkpointing and compile insert."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()

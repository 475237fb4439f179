"""python -m training export CHECKPOINT_DIR OUT.safetensors [--ema]: a run's DCP checkpoint as the one consolidated
safetensors file `python -m cinema_model generate --weights` loads, without finishing (or resuming) the run.

One process, no process group, no GPU, no model: the tensors are read at the full (unsharded) sizes the
checkpoint's metadata records, whatever number of ranks wrote it. Nothing the checkpoint holds is executed (the
same safe reader a resume uses), and a checkpoint whose files do not match its commit record is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from .checkpoint import SafeLoadPlanner, SafeReader, _save_rank0, verify
from .config import JobError

log = logging.getLogger("training")


def read_weights(checkpoint: str | Path, ema: bool = False) -> tuple[dict[str, torch.Tensor], int]:
    """(the trained weights, or their EMA, under the names of the run's exported file; the step)."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise JobError(f"no checkpoint folder {path}")
    problems = verify(path)
    if problems:
        raise JobError(f"checkpoint {path} is damaged, not exporting it: {'; '.join(problems)}")
    reader = SafeReader(path)
    part = "ema" if ema else "model"
    prefix = f"train.{part}."
    try:
        tensors = {k.removeprefix(prefix): torch.empty(m.size, dtype=m.properties.dtype)
                   for k, m in reader.read_metadata().state_dict_metadata.items()
                   if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
        if not tensors:
            raise JobError(f"checkpoint {path} holds no {part} weights"
                           + (" (the run kept no EMA: optim.ema_decay was 0)" if ema else ""))
        wanted = {"train": {part: tensors, "step": 0}}
        dcp.load(wanted, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=True)  # one process
    except CheckpointException as e:
        raise next((exc for exc, _ in e.failures.values() if isinstance(exc, JobError)), e) from None
    return wanted["train"][part], int(wanted["train"]["step"])


def _about(checkpoint: Path, step: int) -> dict[str, str]:
    """The header the trainer's own export writes (preset, stage, step, config), from the run's config.yaml when
    the checkpoint sits in the run's folder (out_dir/checkpoints/step-N)."""
    about = {"step": str(step), "checkpoint": str(checkpoint.resolve())}
    config = checkpoint.parent.parent / "config.yaml"
    if config.is_file():
        import yaml

        job = yaml.safe_load(config.read_text())
        about.update(preset=str(job["model"]["preset"]), stage=str(job["stage"]), config=json.dumps(job))
    return about


def export(checkpoint: str | Path, out: str | Path, ema: bool = False) -> Path:
    tensors, step = read_weights(checkpoint, ema)
    out = Path(out)
    _save_rank0(tensors, out, _about(Path(checkpoint), step))
    log.info("exported %s%s at step %d to %s (%d tensors)", checkpoint, " (EMA)" if ema else "", step, out,
             len(tensors))
    return out

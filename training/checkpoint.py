"""DCP checkpoints of a training run: trained weights, EMA, optimizer, schedule, step and every rank's data position.

A checkpoint is written to ``step-NNNNNNNN.partial``; once every rank has finished writing, the size and SHA-256 of
each of its files go into ``commit.json`` and rank 0 renames the folder to ``step-NNNNNNNN``. A run killed during a
save leaves only a ``.partial`` folder, which is never loaded and is removed by the next save. Before a resume the
newest checkpoint is checked against its ``commit.json``; a damaged one (a truncated or altered file, a missing
record) is passed over with a warning naming the file, for the one before it. The last ``keep`` complete
checkpoints are kept. The folder must be shared by all ranks (a local disk on one node, a shared filesystem).

Loading executes nothing the checkpoint holds: ``.metadata`` is unpickled by an unpickler that admits only DCP's
metadata types, and the non-tensor entries (step, schedule, data positions) by ``torch.load(weights_only=True)``.

Keys are the parameters' own names (``dit.blocks.0.attn...``) whatever activation checkpointing or compile wrap
around them, and every rank's data position is kept under its own key, so a run can resume with those options
changed and on another number of ranks: DCP reshards the weights and optimizer state, and the loader re-derives the
data position (``training.data.loader``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import re
import shutil
from pathlib import Path, PosixPath, PurePosixPath

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.serialization import _get_layout

from .config import JobError

log = logging.getLogger("training")

_NAME = re.compile(r"^step-(\d{8})$")
_DATA_KEY = re.compile(r"^train\.data_rank(\d+)$")
# AdamW's state and hyperparameters keyed by parameter name, as torchtitan keeps them: a checkpoint loads into one
# optimizer or one per parameter (optim.step_in_backward) alike. Checkpoints written before kept param groups by
# position (``train.optim.param_groups.0...``): they load into the layout that wrote them (AdamW after the backward).
_OPTIM_BY_NAME = StateDictOptions(flatten_optimizer_state_dict=True)
_OPTIM_BY_POSITION = StateDictOptions()
_POSITIONAL_GROUP = re.compile(r"^train\.optim\.param_groups\.\d+\.lr$")
COMMIT = "commit.json"


class TrainState:
    """What a checkpoint holds. The data position differs per rank, so each rank's is stored under its own key;
    ``data`` is this rank's position to save, ``saved_data`` every saved rank's position after a load."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer], scheduler,
                 rank: int, ema: dict[str, torch.Tensor] | None = None):
        self.model, self.optimizer, self.scheduler, self.rank, self.ema = model, optimizer, scheduler, rank, ema
        self.step = 0
        self.data: dict = {}
        self.saved_data: list[dict] | None = None
        self.ema_loaded = False  # a checkpoint saved without an EMA leaves it for the trainer to start

    def to_save(self, optim_options: StateDictOptions | None = None) -> dict:
        """Every entry, the optimizer's keyed by parameter name (a save) or in ``optim_options``' layout."""
        state = {"model": get_model_state_dict(self.model),
                 "optim": get_optimizer_state_dict(self.model, self.optimizer, options=optim_options or _OPTIM_BY_NAME),
                 "step": self.step, "scheduler": self.scheduler.state_dict(),
                 f"data_rank{self.rank}": json.dumps(self.data)}  # a leaf: DCP restores leaves, not empty dicts
        if self.ema is not None:
            state["ema"] = self.ema  # loaded in place by DCP
        return state

    def to_load(self, data_ranks: int, exclude: set[str], optim_options: StateDictOptions, ema: bool) -> dict:
        """The entries to read: all but the excluded ones, with every saved rank's data position, the optimizer's
        in the checkpoint's layout, the EMA where the checkpoint has one (``ema``)."""
        state = self.to_save(optim_options)
        del state[f"data_rank{self.rank}"]
        if not ema:
            state.pop("ema", None)
        if "optimizer" in exclude:
            del state["optim"]
        if "data" not in exclude:
            state.update({f"data_rank{r}": "" for r in range(data_ranks)})
        return state

    def apply(self, state: dict, optim_options: StateDictOptions) -> None:
        set_model_state_dict(self.model, state["model"])
        self.ema_loaded = "ema" in state
        if "optim" in state:
            set_optimizer_state_dict(self.model, self.optimizer, state["optim"], options=optim_options)
        self.step = state["step"]
        self.scheduler.load_state_dict(state["scheduler"])
        ranks = sorted(int(k.removeprefix("data_rank")) for k in state if k.startswith("data_rank"))
        self.saved_data = [json.loads(state[f"data_rank{r}"]) for r in ranks] if ranks else None


class Checkpointer:
    def __init__(self, folder: str | Path, keep: int):
        self.folder, self.keep = Path(folder), keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and _NAME.match(p.name))

    def latest(self) -> Path | None:
        """The newest complete checkpoint whose files match their commit record; damaged ones are passed over with
        a warning. Every rank checks a share of the files and all agree on the answer."""
        for path in reversed(self.complete()):
            problems = _all_ranks(lambda rank, world: verify(path, rank, world))
            if not problems:
                return path
            if _rank() == 0:
                log.warning("checkpoint %s is damaged, not resuming from it: %s", path, "; ".join(problems))
        return None

    def save(self, state: TrainState) -> Path:
        final = self.folder / f"step-{state.step:08d}"
        partial = final.with_name(final.name + ".partial")
        rank0 = _rank() == 0
        if rank0:
            for stale in self.folder.glob("*.partial"):  # left by a run killed while saving
                shutil.rmtree(stale, ignore_errors=True)
            partial.mkdir(parents=True, exist_ok=True)
        _barrier()
        dcp.save({"train": state.to_save()}, checkpoint_id=str(partial))
        _barrier()  # every rank has written its part: the checkpoint is complete
        files = sorted(p.name for p in partial.iterdir() if p.is_file())
        sums = _all_ranks(lambda rank, world: [(n, _file_record(partial / n)) for n in files[rank::world]])
        if rank0:
            (partial / COMMIT).write_text(json.dumps({"files": dict(sums)}, indent=1))
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, state: TrainState, path: Path, exclude: set[str] = frozenset()) -> None:
        """Fill ``state`` from the checkpoint at ``path``, leaving out the ``exclude``d parts ("optimizer",
        "data"). A checkpoint that holds anything but DCP's metadata and plain values is refused (JobError)."""
        reader = SafeReader(path)
        try:
            keys = reader.read_metadata().state_dict_metadata
            saved = [int(m[1]) for k in keys if (m := _DATA_KEY.match(k))]
            layout = _OPTIM_BY_POSITION if any(_POSITIONAL_GROUP.match(k) for k in keys) else _OPTIM_BY_NAME
            ema = any(k.startswith("train.ema.") for k in keys)
            wanted = {"train": state.to_load(len(saved), exclude, layout, ema)}
            dcp.load(wanted, storage_reader=reader, planner=SafeLoadPlanner())
        except CheckpointException as e:
            raise next((exc for exc, _ in e.failures.values() if isinstance(exc, JobError)), e) from None
        state.apply(wanted["train"], layout)
        log.info("resumed from %s at step %d%s", path, state.step,
                 f" (not loaded: {', '.join(sorted(exclude))})" if exclude else "")


# -- loading without executing the checkpoint --------------------------------------------------------------------

_METADATA_TYPES = {
    **{("torch.distributed.checkpoint.metadata", n): getattr(dcp_metadata, n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "ChunkStorageMetadata", "TensorProperties",
        "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")},
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): _get_layout,  # a name -> torch.layout lookup
    ("pathlib", "PosixPath"): PosixPath,  # the checkpoint id DCP records
    ("pathlib", "PurePosixPath"): PurePosixPath,
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` and nothing else: any other global (a function a ``__reduce__`` would call,
    a class with side effects) is refused before it is looked up."""

    def find_class(self, module: str, name: str):
        found = _METADATA_TYPES.get((module, name))
        if found is None and module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            found = getattr(torch, name)
        if found is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not checkpoint metadata")
        return found


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader with ``.metadata`` read by ``_MetadataUnpickler`` (tensors are already read with
    ``weights_only``)."""

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
                raise JobError(f"checkpoint {path} refused: its metadata is not plain DCP metadata ({e})") from None
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise JobError(f"checkpoint {path} refused: its metadata is a {type(metadata).__name__}")
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """The default planner, with the non-tensor entries read by ``torch.load(weights_only=True)``: plain values
    (numbers, strings, lists, dicts, tensors) only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise JobError(f"checkpoint entry {fqn!r} refused: it is not a plain value ({e})") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


# -- commit records ----------------------------------------------------------------------------------------------

def _file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def verify(path: Path, rank: int = 0, world: int = 1) -> list[str]:
    """What is wrong with this rank's share (every ``world``-th file) of the checkpoint's files, by its commit
    record: nothing for an intact checkpoint."""
    try:
        files = json.loads((path / COMMIT).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{COMMIT} missing or unreadable ({type(e).__name__}: {e}): the save never completed"] if rank == 0 else []
    problems = []
    for name in sorted(files)[rank::world]:
        expected, file = files[name], path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != expected["bytes"]:
            problems.append(f"{name} has {file.stat().st_size} bytes, {expected['bytes']} were written")
        elif _file_record(file)["sha256"] != expected["sha256"]:
            problems.append(f"{name} does not match its SHA-256 (altered since it was written)")
    return problems


# -- consolidated export -----------------------------------------------------------------------------------------

def export_consolidated(model: nn.Module, path: str | Path, ema: dict[str, torch.Tensor] | None = None,
                        metadata: dict[str, str] | None = None) -> None:
    """One plain safetensors file of the full (unsharded) trained weights, written by rank 0 with ``metadata`` in
    its header: what ``python -m cinema_model generate --weights`` loads. With an EMA, its weights go to
    ``*.ema.safetensors``."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    _save_rank0(full, Path(path), metadata)
    if ema is not None:
        gathered = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in ema.items()}
        _save_rank0(gathered, Path(path).with_suffix(".ema.safetensors"), metadata)
    _barrier()


def _save_rank0(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None) -> None:
    from safetensors.torch import save_file

    if _rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        path.chmod(0o644)  # safetensors writes through a private temporary file (0600)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _all_ranks(fn) -> list:
    """``fn(rank, world)`` on every rank, the lists it returns concatenated in rank order, on every rank."""
    if not dist.is_initialized():
        return fn(0, 1)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, fn(dist.get_rank(), dist.get_world_size()))  # between our own ranks only
    return [x for part in parts for x in part]


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()

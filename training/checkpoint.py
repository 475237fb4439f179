"""DCP checkpoints of a training run: trained weights, EMA, optimizer, schedule, step and every rank's data position.

A checkpoint is written to ``step-NNNNNNNN.partial``; once every rank has finished writing, the size and SHA-256 of
each of its files go into ``commit.json`` with the run, step and world size that wrote it, and rank 0 renames the
folder to ``step-NNNNNNNN``. A run killed during a save leaves only a ``.partial`` folder, which is never loaded and
is removed by the next save. The run is named by a random id in ``run.json`` in its output folder, written at its
first start: a checkpoint copied in from another run (another out_dir or world size, a valid record) is that run's,
whatever its name. Names are never trusted: a resume takes the newest of this run's checkpoints by recorded step
whose files match the record; a damaged one (a truncated or altered file, a missing record) is passed over with a
warning naming the file, for the one before it. Another run's checkpoint is taken only when named by
``checkpoint.resume_from``. Pruning keeps this run's newest ``keep`` intact checkpoints, the one just written among
them, and leaves damaged folders and other runs' in place. The folder must be shared by all ranks (a local disk on
one node, a shared filesystem).

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
import uuid
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

_NAME = re.compile(r"^step-\d{8}(-[0-9a-f]{8})?$")  # the suffix: another folder held the plain name
_DATA_KEY = re.compile(r"^train\.data_rank(\d+)$")
# AdamW's state and hyperparameters keyed by parameter name, as torchtitan keeps them: a checkpoint loads into one
# optimizer or one per parameter (optim.step_in_backward) alike. Checkpoints written before kept param groups by
# position (``train.optim.param_groups.0...``): they load into the layout that wrote them (AdamW after the backward).
_OPTIM_BY_NAME = StateDictOptions(flatten_optimizer_state_dict=True)
_OPTIM_BY_POSITION = StateDictOptions()
_POSITIONAL_GROUP = re.compile(r"^train\.optim\.param_groups\.\d+\.lr$")
COMMIT = "commit.json"
RUN = "run.json"  # in the training output folder: the run's id, which its checkpoints record


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
    """The checkpoints of one run in ``folder``. The run is named by the id in ``run_dir``'s run.json (the training
    output folder; the checkpoint folder by default), written at its first start. Made on every rank at once: rank 0
    reads the id and tells the others."""

    def __init__(self, folder: str | Path, keep: int, run_dir: str | Path | None = None):
        self.folder, self.keep = Path(folder), keep
        run_dir = self.folder if run_dir is None else Path(run_dir)
        self.run = _all_ranks(lambda rank, world: [] if rank else [_run_id(run_dir)])[0]
        self._problems: dict[Path, list[str]] = {}  # verify()'s answer per checkpoint: each is read once a process
        self._warned: set[Path] = set()

    def latest(self, resume_from: str | Path | None = None) -> Path | None:
        """The checkpoint to resume from: the newest of this run's by recorded step whose files match their record
        (damaged ones are passed over with a warning), else ``resume_from``, which must be intact. Another run's
        checkpoint in the folder is never taken by itself: with nothing else to resume from it is refused (JobError)
        rather than trained past. Every rank checks a share of the files and all agree on the answer."""
        self._problems.clear()  # a resume checks the files as they are now
        folders = self._folders()
        others = self._others(folders)
        path = next((p for p in self._own(folders) if self._intact(p)), None)
        if path is None and resume_from is not None:
            path = _intact_or_refused(Path(resume_from))
            others = [(p, r) for p, r in others if p != path]
        if path is None and any(r for _, r in others):
            other, record = next((p, r) for p, r in others if r)
            raise JobError(f"checkpoint {other} is of another run ({_about(record)}), and {self.folder} holds none of "
                           f"this run's: to start from it set checkpoint.resume_from={other}; to start afresh move "
                           f"it out of {self.folder}")
        self._leave_alone(others)
        return path

    def save(self, state: TrainState) -> Path:
        rank0 = _rank() == 0
        folders = self._folders()
        final = self._destination(state.step, folders)
        partial = final.with_name(final.name + ".partial")
        if rank0:
            for stale in self.folder.glob("*.partial"):  # left by a run killed while saving
                shutil.rmtree(stale, ignore_errors=True)
            partial.mkdir(parents=True, exist_ok=True)
        _barrier()
        dcp.save({"train": state.to_save()}, checkpoint_id=str(partial))
        _barrier()  # every rank has written its part: the checkpoint is complete
        files = sorted(p.name for p in partial.iterdir() if p.is_file())
        sums = _all_ranks(lambda rank, world: [(n, _file_record(partial / n)) for n in files[rank::world]])
        record = {"run": self.run, "step": state.step, "world_size": _world(), "files": dict(sums)}
        if rank0:
            (partial / COMMIT).write_text(json.dumps(record, indent=1))
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
        self._problems[final] = []  # its files are the ones just summed
        self._prune([(p, r) for p, r in folders if p != final] + [(final, record)], final)
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
        recorded = recorded_step(path)
        if recorded is not None and recorded != wanted["train"]["step"]:
            raise JobError(f"checkpoint {path} refused: it holds step {wanted['train']['step']} but its commit record "
                           f"says step {recorded}")
        state.apply(wanted["train"], layout)
        log.info("resumed from %s at step %d%s", path, state.step,
                 f" (not loaded: {', '.join(sorted(exclude))})" if exclude else "")

    def _folders(self) -> list[tuple[Path, dict | None]]:
        """Every checkpoint folder with its commit record (None: missing or unreadable), as rank 0 lists them (a
        rank on another node may see a stale listing of a shared filesystem)."""
        def listing(rank: int, world: int) -> list:
            if rank:
                return []
            found = sorted(self.folder.iterdir()) if self.folder.is_dir() else []
            return [[(p, read_record(p)) for p in found if p.is_dir() and _NAME.match(p.name)]]
        return _all_ranks(listing)[0]

    def _is_own(self, record: dict | None) -> bool:
        return record is not None and record["run"] == self.run

    def _own(self, folders: list[tuple[Path, dict | None]]) -> list[Path]:
        """This run's checkpoints, newest first by recorded step."""
        own = sorted((r["step"], p.name, p) for p, r in folders if self._is_own(r))
        return [p for _, _, p in reversed(own)]

    def _others(self, folders: list[tuple[Path, dict | None]]) -> list[tuple[Path, dict | None]]:
        """The folders that are not this run's checkpoints (other runs', those without a record), newest first by
        recorded step."""
        others = [(p, r) for p, r in folders if not self._is_own(r)]
        return sorted(others, key=lambda f: ((f[1] or {}).get("step") or -1, f[0].name), reverse=True)

    def _intact(self, path: Path) -> bool:
        """Whether the checkpoint's files match its record (checked once a process); a damaged one is warned about."""
        if path not in self._problems:
            self._problems[path] = _all_ranks(lambda rank, world: verify(path, rank, world))
            if self._problems[path] and _rank() == 0:
                log.warning("checkpoint %s is damaged: not resumed from, left in place: %s", path,
                            "; ".join(self._problems[path]))
        return not self._problems[path]

    def _leave_alone(self, others: list[tuple[Path, dict | None]]) -> None:
        """Say once of each folder that is not this run's checkpoint that it is neither resumed from nor pruned."""
        for path, record in others:
            if record is None:
                self._intact(path)  # warned about as damaged: its record is missing
            elif path not in self._warned and _rank() == 0:
                log.warning("checkpoint %s is of another run (%s): not resumed from, left in place (checkpoint."
                            "resume_from takes it while this run has no checkpoint)", path, _about(record))
            self._warned.add(path)

    def _destination(self, step: int, folders: list[tuple[Path, dict | None]]) -> Path:
        """``step-N``, unless a folder that is not this run's checkpoint of that step holds the name (another run's,
        a damaged or misnamed one): then ``step-N-<run>``, leaving that folder as it is."""
        final = self.folder / f"step-{step:08d}"
        records = dict(folders)
        if final in records and not (self._is_own(records[final]) and records[final]["step"] == step):
            final = final.with_name(f"{final.name}-{self.run[:8]}")
        return final

    def _prune(self, folders: list[tuple[Path, dict | None]], written: Path) -> None:
        """Keep this run's newest ``keep`` intact checkpoints by recorded step and ``written``; remove this run's
        older ones. Damaged ones met on the way and the folders that are not this run's are left in place."""
        kept, older = 0, []
        for path in self._own(folders):
            if path == written:
                kept += 1
            elif kept >= self.keep:
                older.append(path)
            elif self._intact(path):
                kept += 1
        self._leave_alone(self._others(folders))
        if _rank() == 0:
            for path in older:
                shutil.rmtree(path, ignore_errors=True)


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


def read_record(path: Path) -> dict | None:
    """The checkpoint's commit record (``files``, ``run``, ``step``, ``world_size``); None where it is missing or
    unreadable. A record written before records named their run has None for the last three."""
    try:
        record = json.loads((path / COMMIT).read_text())
        files = record["files"]
        record = {"files": files, **{k: record.get(k) for k in ("run", "step", "world_size")}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    named = isinstance(record["run"], str) and all(isinstance(record[k], int) for k in ("step", "world_size"))
    earlier = record["run"] is record["step"] is record["world_size"] is None
    return record if isinstance(files, dict) and (named or earlier) else None


def recorded_step(path: Path) -> int | None:
    """The step the checkpoint's commit record names (None: a record written before records named it)."""
    return (read_record(path) or {}).get("step")


def _intact_or_refused(path: Path) -> Path:
    """``checkpoint.resume_from``'s checkpoint, whichever run wrote it, once its files match its record."""
    if not path.is_dir():
        raise JobError(f"checkpoint.resume_from={path}: no such checkpoint folder")
    problems = _all_ranks(lambda rank, world: verify(path, rank, world))
    if problems:
        raise JobError(f"checkpoint.resume_from={path} is damaged, not resuming from it: {'; '.join(problems)}")
    return path


def _about(record: dict) -> str:
    if record["run"] is None:
        return "a record that names no run"
    return f"run {record['run'][:8]}, step {record['step']}, world size {record['world_size']}"


def verify(path: Path, rank: int = 0, world: int = 1) -> list[str]:
    """What is wrong with this rank's share (every ``world``-th file) of the checkpoint's files, by its commit
    record: nothing for an intact checkpoint."""
    record = read_record(path)
    if record is None:
        return [f"{COMMIT} missing or unreadable: the save never completed"] if rank == 0 else []
    files = record["files"]
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


def _run_id(folder: Path) -> str:
    """The id of the run whose outputs ``folder`` holds (its ``run.json``); a new one at the run's first start."""
    path = folder / RUN
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{RUN}.tmp")
        temporary.write_text(json.dumps({"run": uuid.uuid4().hex}))
        temporary.rename(path)
    try:
        run = json.loads(path.read_text())["run"]
        if not re.fullmatch(r"[0-9a-f]{32}", run):
            raise ValueError(f"{run!r} is not a run id")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise JobError(f"{path} is unreadable ({e}): it names the run that wrote there, which its checkpoints "
                       "record; restore it, or delete it to start a new run (its checkpoints then count as another "
                       "run's)") from None
    return run


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


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

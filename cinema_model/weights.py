"""The trained parts' weights without a full copy: a seeded init that does not depend on how a parameter is laid out,
and loading from safetensors files straight into what this process holds of each parameter.

What a process holds of a parameter is either the whole tensor (a plain build) or its FSDP2 shard: a DTensor whose
local part is a range of rows (FSDP2 shards dim 0, ``torch.chunk`` sizes). Both the init and the loads write exactly
those rows, so a model built on the meta device, sharded and then materialised gets, shard by shard, the values a
plain build gets whole, and no rank ever holds more than one full tensor (the init's draw) at a time.

Files are read with plain reads at the rows' byte offsets (a safetensors file is an 8-byte header length, a JSON
header with each tensor's dtype, shape and byte range, then the data), not through a memory map: mapped pages of a
multi-GB checkpoint would count in every rank's resident memory, and only the rows a rank keeps are read at all.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def clean_name(name: str) -> str:
    """A parameter's name without the wrappers activation checkpointing and compile insert."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


# -- what this process holds of a parameter ----------------------------------------------------------------------

def local_rows(param: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """(first global row, row count, the local tensor to write) of what this process holds of ``param``: all of it,
    or its FSDP2 shard of dim 0. A 0-d parameter counts as one row."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(param, DTensor):
        data = param.data
        return 0, (data.shape[0] if data.ndim else 1), data
    if any(not (isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == 0)) for p in param.placements):
        raise ValueError(f"only dim-0 shards (FSDP2) are loaded here, not {param.placements}")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    local = param.to_local()
    if param.ndim == 0:
        return 0, 1, local
    return offset[0], shape[0], local


def _write_rows(local: torch.Tensor, rows: torch.Tensor) -> None:
    local.copy_(rows.reshape(local.shape))


# -- a seeded init, the same values whatever the layout ----------------------------------------------------------

def _param_generator(seed: int, name: str) -> torch.Generator:
    state = np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _uniform(shape, bound: float, g: torch.Generator) -> torch.Tensor:
    return torch.empty(shape).uniform_(-bound, bound, generator=g)


def _init_rules(part: nn.Module) -> dict[str, callable]:
    """Parameter name -> (shape, generator) -> full tensor. PyTorch's own defaults for each module kind: Linear
    U(+-1/sqrt(fan_in)) for weight and bias, LayerNorm ones and zeros, MultiheadAttention Xavier in-projection with
    zero biases, learned tokens N(0, 0.02). A module kind without a rule is an error, not a silent default."""
    from cinema_model.aligner import AlignerNet

    rules = {}
    for prefix, module in part.named_modules():
        at = f"{prefix}." if prefix else ""
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, nn.Linear):
            bound = 1 / math.sqrt(module.in_features) if module.in_features else 0.0
            rules[at + "weight"] = lambda shape, g, b=bound: _uniform(shape, b, g)
            if "bias" in own:
                rules.setdefault(at + "bias", lambda shape, g, b=bound: _uniform(shape, b, g))
        elif isinstance(module, nn.LayerNorm):
            rules[at + "weight"] = lambda shape, g: torch.ones(shape)
            if "bias" in own:
                rules[at + "bias"] = lambda shape, g: torch.zeros(shape)
        elif isinstance(module, nn.MultiheadAttention) and set(own) <= {"in_proj_weight", "in_proj_bias"}:
            rules[at + "in_proj_weight"] = lambda shape, g: _uniform(shape, math.sqrt(6 / (shape[0] + shape[1])), g)
            rules[at + "in_proj_bias"] = lambda shape, g: torch.zeros(shape)
            rules[at + "out_proj.bias"] = lambda shape, g: torch.zeros(shape)  # MultiheadAttention zeroes it
        elif isinstance(module, AlignerNet) and set(own) == {"queries"}:
            rules[at + "queries"] = lambda shape, g: torch.randn(shape, generator=g) * 0.02
        else:
            raise TypeError(f"no init rule for the parameters {sorted(own)} of {prefix or 'the part'} "
                            f"({type(module).__name__}): add one in cinema_model.weights")
    return {clean_name(k): v for k, v in rules.items()}


@torch.no_grad()
def seeded_init_(part: nn.Module, name: str, seed: int, skip: set[str] = frozenset()) -> None:
    """Initialise every parameter of ``part`` (called ``name`` in the model) but those in ``skip`` from a generator
    keyed by (seed, the parameter's name): the same values on every rank, in a plain or a sharded layout."""
    rules = _init_rules(part)
    for pname, param in part.named_parameters():
        key = clean_name(pname)
        if key in skip:
            continue
        full = rules[key](tuple(param.shape), _param_generator(seed, f"{name}.{key}"))
        first, count, local = local_rows(param)
        if count:
            _write_rows(local, full if full.ndim == 0 else full[first:first + count])


@torch.no_grad()
def zero_(part: nn.Module) -> None:
    """Fill what this process holds of every parameter with zeros (a part a checkpoint fills next)."""
    for param in part.parameters():
        local_rows(param)[2].zero_()


def check_no_buffers(part: nn.Module, name: str) -> None:
    """A trained part built on the meta device must have no buffers: ``to_empty`` leaves them uninitialised."""
    buffers = [n for n, _ in part.named_buffers()]
    if buffers:
        raise TypeError(f"{name} has buffers {buffers}: a meta-device build needs them recomputed after to_empty")


# -- safetensors files, read row range by row range ---------------------------------------------------------------

@dataclass(frozen=True)
class StoredTensor:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # byte offset of the data in the file
    end: int

    def read_rows(self, first: int, count: int) -> torch.Tensor:
        """Rows [first, first + count) of dim 0 (a 0-d tensor: the whole), in the file's dtype, on the CPU."""
        row_shape = self.shape[1:] if self.shape else ()
        row_bytes = math.prod(row_shape) * torch.empty((), dtype=self.dtype).element_size()
        rows = count if self.shape else 1
        buf = torch.empty(rows * row_bytes, dtype=torch.uint8)
        with open(self.file, "rb", buffering=0) as f:
            f.seek(self.start + (first * row_bytes if self.shape else 0))
            view, done = memoryview(buf.numpy()), 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise OSError(f"{self.file} ends before the data of a tensor: truncated")
                done += n
        out = buf.view(self.dtype)
        return out.reshape((count, *row_shape)) if self.shape else out.reshape(())


def read_header(file: Path) -> dict[str, StoredTensor]:
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise OSError(f"{file} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise OSError(f"{file} is not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    base, out = 8 + size, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise OSError(f"{file}: tensor {name!r} has dtype {info['dtype']}, which is not read here")
        begin, end = info["data_offsets"]
        t = StoredTensor(file, _DTYPES[info["dtype"]], tuple(info["shape"]), base + begin, base + end)
        if (end - begin) != math.prod(t.shape) * torch.empty((), dtype=t.dtype).element_size():
            raise OSError(f"{file}: tensor {name!r} has {end - begin} bytes for shape {t.shape}")
        out[name] = t
    return out


def stored_tensors(folder: Path, stem: str) -> dict[str, StoredTensor]:
    """The tensors of the checkpoint ``stem`` in ``folder``: ``stem.safetensors``, or the files its
    ``stem.safetensors.index.json`` names (a sharded checkpoint)."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return read_header(single)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        out = {}
        for file in sorted(set(weight_map.values())):
            for name, t in read_header(folder / file).items():
                if weight_map.get(name) == file:
                    out[name] = t
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise OSError(f"{index} names tensors its files do not hold: {missing[:5]}")
        return out
    raise FileNotFoundError(f"no {single.name} or {index.name} in {folder}: the weights must be in safetensors")


def checkpoint_folder(path: str, subfolder: str | None = None) -> Path:
    """A local folder, or a hub id resolved to its snapshot in the Hugging Face cache (downloaded only where the hub
    is online: HF_HUB_OFFLINE=1, as the trainer sets it, reads the cache only)."""
    if Path(path).is_dir():
        folder = Path(path) / (subfolder or "")
    else:
        from huggingface_hub import snapshot_download

        patterns = [f"{subfolder}/*"] if subfolder else ["*.json", "*.safetensors"]
        folder = Path(snapshot_download(path, allow_patterns=patterns)) / (subfolder or "")
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    return folder


@torch.no_grad()
def load_rows_(param: torch.Tensor, source: StoredTensor, shape: tuple[int, ...], what: str) -> None:
    """Fill what this process holds of ``param`` from ``source``, read as ``shape`` (the target's shape: the same
    bytes, e.g. a conv kernel as a linear weight)."""
    if tuple(param.shape) != tuple(shape):
        raise ValueError(f"{what}: shape {tuple(shape)} in the checkpoint, {tuple(param.shape)} in the model")
    if math.prod(source.shape) != math.prod(shape) or (shape and source.shape[:1] != tuple(shape[:1])):
        raise ValueError(f"{what}: stored as {source.shape}, which is not read as {tuple(shape)}")
    first, count, local = local_rows(param)
    if count == 0:
        return
    rows = source.read_rows(first, count)
    _write_rows(local, rows.to(device=local.device, dtype=local.dtype))

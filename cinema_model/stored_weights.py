"""Initial weights stored in safetensors files: where each of a trained part's parameters is stored, matched
strictly (every stored weight has exactly one parameter and every parameter one stored weight, of its shape), and
loaded whole into a plain part. ``training.materialize`` loads the same matches into FSDP2 shards, row range by
row range.

Shapes are checked against the part's before any tensor is read: a file never decides how much is allocated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from cinema_model.weights import clean_name


@dataclass(frozen=True)
class StoredWeight:
    """Tensor ``name`` of ``file``, stored as ``stored_shape`` and read as ``shape``: the same bytes in the layout of
    the parameter it initialises (a conv kernel as a linear weight), dim 0 kept, so that rows read as rows."""

    file: Path
    name: str
    stored_shape: tuple[int, ...]
    shape: tuple[int, ...]


def file_weights(file: Path) -> dict[str, StoredWeight]:
    """Every tensor of a safetensors file, read as stored (only the header is read)."""
    with safe_open(str(file), "pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    return {name: StoredWeight(file, name, shape, shape) for name, shape in shapes.items()}


def checkpoint_weights(folder: Path, stem: str) -> dict[str, StoredWeight]:
    """The tensors of the checkpoint ``stem`` in ``folder``: ``stem.safetensors``, or the files its
    ``stem.safetensors.index.json`` names (a sharded checkpoint)."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return file_weights(single)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        out = {}
        for file in sorted(set(weight_map.values())):
            out.update({name: w for name, w in file_weights(folder / file).items() if weight_map.get(name) == file})
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


def match_weights(part: nn.Module, stored: dict[str, StoredWeight], source: str) -> dict[str, StoredWeight]:
    """``stored`` (parameter name -> its stored weight), checked to hold exactly ``part``'s parameters, each read as
    its shape; ``source`` names the checkpoint in the errors."""
    shapes = {clean_name(k): tuple(p.shape) for k, p in part.named_parameters()}
    missing, unexpected = sorted(set(shapes) - set(stored)), sorted(set(stored) - set(shapes))
    if missing or unexpected:
        raise KeyError(f"{source} does not hold the weights of {type(part).__name__}: missing {missing[:8]}, "
                       f"unexpected {unexpected[:8]}")
    for key, w in stored.items():
        if w.shape != shapes[key]:
            raise ValueError(f"{source}: {w.name!r} has shape {w.shape} in the checkpoint, {key!r} {shapes[key]} "
                             "in the model")
        if math.prod(w.stored_shape) != math.prod(w.shape) or w.stored_shape[:1] != w.shape[:1]:
            raise ValueError(f"{source}: {w.name!r} is stored as {w.stored_shape}, which is not read as {w.shape}")
    return stored


@torch.no_grad()
def load_whole_(part: nn.Module, stored: dict[str, StoredWeight]) -> None:
    """Every parameter of the plain ``part`` from its stored weight (``match_weights``'), cast to its dtype, one
    tensor at a time."""
    params = {clean_name(k): p for k, p in part.named_parameters()}
    for file in sorted({w.file for w in stored.values()}):
        with safe_open(str(file), "pt") as f:
            for key, w in stored.items():
                if w.file == file:
                    params[key].copy_(f.get_tensor(w.name).reshape(w.shape))

"""The trained parts of a sharded CinemaModel given storage and their initial values, shard by shard.

The trainer builds the trained parts on the meta device (``CinemaModel(..., trained_on_meta=True)``) and shards them
there (``training.parallelize``); ``materialize_shards`` then allocates only each rank's FSDP2 shards and fills them
with the values a plain build gets whole (``cinema_model.initial_weights``): the rows of each seeded value, the rows
of each stored weight read straight from its file. No rank ever holds a full copy of a sharded part: at most one
full tensor, the seeded init's draw of one parameter.

What a rank holds of a parameter is its FSDP2 shard, a DTensor whose local part is a range of rows (FSDP2 shards
dim 0, ``torch.chunk`` sizes), or the whole tensor where a part is not sharded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from cinema_model.initial_weights import stored_initial_weights
from cinema_model.model import CinemaModel
from cinema_model.stored_weights import StoredWeight
from cinema_model.weights import clean_name, seeded_values

from .safetensors_rows import read_header


def local_rows(param: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """(first global row, row count, the local tensor to write) of what this process holds of ``param``: all of it,
    or its FSDP2 shard of dim 0. A 0-d parameter counts as one row."""
    if not isinstance(param, DTensor):
        data = param.data
        return 0, (data.shape[0] if data.ndim else 1), data
    if any(not (isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == 0)) for p in param.placements):
        raise ValueError(f"only dim-0 shards (FSDP2) are loaded here, not {param.placements}")
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    local = param.to_local()
    if param.ndim == 0:
        return 0, 1, local
    return offset[0], shape[0], local


@torch.no_grad()
def materialize_shards(model: CinemaModel, device: torch.device, initial_weights: bool = True) -> CinemaModel:
    """Storage on ``device`` for what this rank holds of the trained parts, then their initial values.
    ``initial_weights=False`` zero-fills instead (a resume: the checkpoint then overwrites every trained weight)."""
    stored = stored_initial_weights(model) if initial_weights else {}
    for name, part in model.trainable_parts().items():
        part.to_empty(device=device)
        if not initial_weights:
            for param in part.parameters():
                local_rows(param)[2].zero_()
        elif name in stored:
            _load_rows_(part, stored[name])
        else:
            for param, value in seeded_values(part, name, model.init_seed):
                first, count, local = local_rows(param)
                if count:
                    local.copy_((value if value.ndim == 0 else value[first:first + count]).reshape(local.shape))
    return model


def _load_rows_(part: nn.Module, stored: dict[str, StoredWeight]) -> None:
    """What this rank holds of each parameter of ``part``, read from its stored weight (``match_weights``'), cast to
    the parameter's dtype."""
    headers = {file: read_header(file) for file in {w.file for w in stored.values()}}
    for pname, param in part.named_parameters():
        w = stored[clean_name(pname)]
        source = headers[w.file][w.name]
        if source.shape != w.stored_shape:
            raise OSError(f"{w.file}: {w.name!r} is {source.shape} now, {w.stored_shape} when it was matched")
        first, count, local = local_rows(param)
        if count:
            rows = source.read_rows(first, count)
            local.copy_(rows.reshape(local.shape).to(device=local.device, dtype=local.dtype))

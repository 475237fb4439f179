"""The trained parts' initial values, and a plain build's materialisation.

A part with stored initial weights (a pretrained AlignerNet, the CogVideoX conversion for the DiT) takes every
parameter from them, strictly; a part without takes the seeded init (``cinema_model.weights``). ``materialize``
gives a plain build's trained parts storage and those values whole; ``training.materialize`` does the same for a
sharded build, shard by shard, with the same values.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cinema_model.convert import cogvideox_weights
from cinema_model.stored_weights import StoredWeight, file_weights, load_whole_, match_weights
from cinema_model.weights import seeded_init_


def stored_initial_weights(model: nn.Module) -> dict[str, dict[str, StoredWeight]]:
    """Trained part of a ``CinemaModel`` -> where each of its parameters' initial values is stored, for the parts that
    start from stored weights (none in a build without weights). The model calls this module while it builds, so
    the type is not imported here."""
    if not model.with_weights:
        return {}
    cfg, out = model.cfg, {}
    if model.aligner is not None and cfg.aligner.pretrained:
        # A bare AlignerNet state dict, or the trained-weights file of an `aligner` training run ("aligner." keys).
        path = cfg.aligner.pretrained
        stored = {k.removeprefix("aligner."): w for k, w in file_weights(Path(path)).items()}
        out["aligner"] = match_weights(model.aligner, stored, path)
    if model.dit is not None and cfg.dit.init_from:
        stored = cogvideox_weights(cfg.dit.init_from, cfg.dit.init_subfolder)
        out["dit"] = match_weights(model.dit, stored, f"CogVideoX checkpoint {cfg.dit.init_from}")
    return out


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device | str, initial_weights: bool = True) -> nn.Module:
    """Storage on ``device`` for the trained parts of a plain build (left on the meta device by
    ``trained_on_meta``), then their initial values. ``initial_weights=False`` zero-fills instead: a file of
    trained weights fills every one next."""
    stored = stored_initial_weights(model) if initial_weights else {}
    for name, part in model.trainable_parts().items():
        part.to_empty(device=device)
        if not initial_weights:
            for param in part.parameters():
                param.zero_()
        elif name in stored:
            load_whole_(part, stored[name])
        else:
            seeded_init_(part, name, model.init_seed)
    return model

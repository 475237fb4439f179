"""Parallelism applied to a CinemaModel from outside its code, in torchtitan's order: activation checkpointing, then
compile, then FSDP2 (`fully_shard` per block, then per trained part).

The trained parts are sharded while they are still on the meta device (``CinemaModel(..., trained_on_meta=True)``);
``training.materialize`` then allocates and fills only each rank's shards.

Frozen parts hold no gradients or optimizer state. With ``encoders="replicated"`` every rank keeps its own copy in
the frozen dtype; with ``"sharded"`` the MLLM (and the T5 encoder where the stage has one) is sharded with
`fully_shard` per decoder layer and once more for what is left (embeddings, vision tower, final norm), as torchtitan
shards frozen encoders: its memory divides by the world size and each layer's weights are all-gathered just for its
forward. They are groups of their own, never mixed with trained weights, so each group has one dtype. The VAE (0.2 B
parameters, convolutions) stays replicated.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from cinema_model.aligner import AlignerNet
from cinema_model.model import CinemaModel


def _block_lists(part: nn.Module) -> list[nn.ModuleList]:
    """Where a trained part keeps its repeated blocks: the DiT's joint blocks, the AlignerNet's layers."""
    if isinstance(part, AlignerNet):
        return [part.encoder.layers, part.decoder.layers]
    return [part.blocks]


def _blocks(part: nn.Module) -> list[nn.Module]:
    return [block for blocks in _block_lists(part) for block in blocks]


def apply_activation_checkpointing(model: CinemaModel) -> None:
    for part in model.trainable_parts().values():
        for blocks in _block_lists(part):
            for i, block in enumerate(blocks):
                blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: CinemaModel) -> None:
    # Per block: the blocks are identical, so one compiled graph serves all of them and compile time stays small.
    for part in model.trainable_parts().values():
        for block in _blocks(part):
            block.compile(fullgraph=False)


def apply_fsdp(model: CinemaModel, mesh: DeviceMesh, param_dtype: torch.dtype, reduce_dtype: torch.dtype = torch.float32) -> None:
    # FSDP2 warns that AlignerNet returns a view: nn.Linear on (B, N, W) gives a view of its 2-D product. The hook it
    # warns about is lost only by an in-place op on that output, and nothing writes to it (condition dropout
    # replaces captions, not tokens), so the warning says nothing about this model.
    warnings.filterwarnings("ignore", r"FSDP2-wrapped module \(FSDPAlignerNet\) returned a view tensor")
    for name, part in model.trainable_parts().items():
        # FSDP2 casts every floating-point forward input to param_dtype by default: the DiT's timestep and RoPE
        # tables would reach it in bf16 (t=0.7123 as 0.7109), unlike generate's. The DiT casts its token inputs
        # itself; the AlignerNet's only input is the encoder's states, cast as before.
        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                                  cast_forward_inputs=name != "dit")
        blocks = _blocks(part)
        for i, block in enumerate(blocks):
            # The last block's parameters are needed again at once by the backward: no point in freeing them.
            fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
        fully_shard(part, mesh=mesh, mp_policy=mp)


def _frozen_layer_lists(model: CinemaModel) -> dict[str, nn.ModuleList]:
    """Frozen part -> the layers every forward runs: Qwen2-VL's decoder layers, T5's encoder blocks. Not the vision
    blocks: a rank whose samples have no subject image skips them, and a per-block all-gather would then wait forever
    on the ranks that run them; they sit in the part's root group, gathered by every forward."""
    out = {}
    if model.mllm is not None:
        out["mllm"] = model.mllm.model.language_model.layers
    if model.t5 is not None:
        out["t5"] = model.t5.model.encoder.block
    return out


def apply_frozen_fsdp(model: CinemaModel, mesh: DeviceMesh) -> None:
    """Shard the frozen encoders per layer, then each encoder's remaining weights as one group (its root).
    ``reshard_after_forward`` given explicitly: FSDP2 otherwise keeps a root's weights gathered after its forward
    (for the backward a frozen encoder never has), which would undo the sharding of the root group."""
    parts = {"mllm": model.mllm, "t5": model.t5}
    for name, layers in _frozen_layer_lists(model).items():
        for layer in layers:
            fully_shard(layer, mesh=mesh, reshard_after_forward=True)
        fully_shard(parts[name].model, mesh=mesh, reshard_after_forward=True)


def parallelize(model: CinemaModel, mesh: DeviceMesh | None, *, activation_checkpointing: bool, compile: bool,
                param_dtype: torch.dtype, encoders: str = "replicated") -> CinemaModel:
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model)
    if mesh is not None:
        apply_fsdp(model, mesh, param_dtype)
        if encoders == "sharded":
            apply_frozen_fsdp(model, mesh)
    return model

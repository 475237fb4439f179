"""The trained parts' seeded init on plain tensors: each parameter's value depends on (seed, its name) only, never
on how the parameter is laid out, so a sharded build (``training.materialize``) writes into each shard the rows of
the value a plain build gets whole, and every rank draws the same values.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


def clean_name(name: str) -> str:
    """A parameter's name without the wrappers activation checkpointing and compile insert."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


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


def seeded_values(part: nn.Module, name: str, seed: int) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
    """Each parameter of ``part`` (called ``name`` in the model) with its full initial value, from a generator keyed
    by (seed, the parameter's name), drawn one parameter at a time."""
    rules = _init_rules(part)
    for pname, param in part.named_parameters():
        key = clean_name(pname)
        yield param, rules[key](tuple(param.shape), _param_generator(seed, f"{name}.{key}"))


@torch.no_grad()
def seeded_init_(part: nn.Module, name: str, seed: int) -> None:
    """Initialise every parameter of the plain (unsharded) ``part`` with its seeded value."""
    for param, value in seeded_values(part, name, seed):
        param.copy_(value)


def check_no_buffers(part: nn.Module, name: str) -> None:
    """A trained part built on the meta device must have no buffers: ``to_empty`` leaves them uninitialised."""
    buffers = [n for n, _ in part.named_buffers()]
    if buffers:
        raise TypeError(f"{name} has buffers {buffers}: a meta-device build needs them recomputed after to_empty")

"""Tiny checkpoints for the model tests, saved once per test session through the real builders; a model's trained
weights as a training run exports them."""

from __future__ import annotations

import functools
import os
import tempfile

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@functools.cache
def tiny_checkpoints() -> str:
    from tiny_models.cinema_checkpoints import save_tiny_checkpoints

    return str(save_tiny_checkpoints(tempfile.mkdtemp(prefix="cinema_tiny_")))


def tiny_config(**changes):
    from cinema_model.config import preset, replace

    return replace(preset("tiny", tiny_checkpoints()), **changes)


def subject_batch(counts: list[int], frames: int = 9, size: int = 32, seed: int = 0) -> dict:
    """A training batch with counts[i] subjects in sample i (module docstring of cinema_model.model)."""
    from cinema_model.subjects import pad_subjects

    g = torch.Generator().manual_seed(seed)
    subjects, num = pad_subjects([[torch.rand(3, size, size, generator=g) * 2 - 1 for _ in range(k)] for k in counts],
                                 size, size)
    return dict(video=torch.rand(len(counts), frames, 3, size, size, generator=g) * 2 - 1,
                captions=[f"subject {i} walks along a beach" for i in range(len(counts))],
                subjects=subjects, num_subjects=num)


def trained_weights(model) -> dict[str, torch.Tensor]:
    """A CinemaModel's trained weights under the names of a run's exported file ("aligner.", "dit.")."""
    return nn.ModuleDict(model.trainable_parts()).state_dict()


def save_trained(model, path) -> None:
    """A CinemaModel's trained weights written as a training run exports them."""
    from training.checkpoint import export_consolidated

    export_consolidated(nn.ModuleDict(model.trainable_parts()), path)


def converted_cogvideox(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers CogVideoX state dict under the CinemaDiT's names and layouts (``cinema_model.convert``)."""
    from cinema_model.convert import cogvideox_name, converted_shape

    return {cogvideox_name(k): v.reshape(converted_shape(k, tuple(v.shape))) for k, v in state.items()}

"""From a loader batch (the dataset's view) to a model batch (CinemaModel.loss's view), and per-sample randomness."""

from __future__ import annotations

import numpy as np
import torch

from cinema_model.subjects import to_model_range

from .data.features import FeatureSet


def model_batch(batch: dict, device: torch.device, features: FeatureSet | None = None) -> dict:
    """The loader's uint8 pixels become floats on ``device``: the copy moves 4x fewer bytes, and on a GPU the
    conversion is free. Subjects come already framed at the clip's size (``cinema_model.subjects.frame_subject``,
    as ``generate`` frames them) and are cut to the batch's largest count. A batch of precomputed features
    (``features`` given) becomes the encoders' outputs, with the unconditional states condition dropout uses."""
    k = int(batch["num_subjects"].max()) if len(batch["num_subjects"]) else 0
    if features is not None:
        return {
            "latents": batch["latents"].to(device, non_blocking=True).float(),  # as the VAE's encode returns them
            "captions": list(batch["caption"]),
            "subject_latents": batch["subject_latents"][:, :k].to(device, non_blocking=True),
            "num_subjects": batch["num_subjects"],
            "text_states": batch["text_states"].to(device, non_blocking=True),
            "text_mask": batch["text_mask"].to(device, non_blocking=True),
            "uncond_states": features.uncond_states.to(device),
            "uncond_mask": features.uncond_mask.to(device),
        }
    return {
        "video": to_model_range(batch["video"].to(device, non_blocking=True)),
        "captions": list(batch["caption"]),
        "subjects": to_model_range(batch["subjects"][:, :k].to(device, non_blocking=True)),
        "num_subjects": batch["num_subjects"],
    }


def sample_generators(seed: int, step: int, micro: int, first_index: int, count: int) -> list[torch.Generator]:
    """One generator per sample, keyed by (seed, step, micro-batch, the sample's index in the global batch): the
    noise a sample gets does not depend on the world size, and a resumed run draws exactly what it would have."""
    gens = []
    for i in range(first_index, first_index + count):
        state = int(np.random.SeedSequence([seed, step, micro, i]).generate_state(1, dtype=np.uint64)[0])
        gens.append(torch.Generator().manual_seed(state))
    return gens

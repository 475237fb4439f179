"""From a loader batch (the dataset's view) to a model batch (CinemaModel.loss's view), and per-sample randomness."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def subjects_for_model(rgba: torch.Tensor, counts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, K, 4, S, S) RGBA crops, float in [0, 1] -> (B, k, 3, height, width) in [-1, 1], k = the batch's largest count:
    composited on white and letterboxed into the frame on white, as ``cinema_model.subjects.subject_tensor`` does
    for single images at generation time."""
    b, _, _, s, _ = rgba.shape
    k = int(counts.max()) if len(counts) else 0
    x = rgba[:, :k].reshape(b * k, 4, s, s)
    rgb, alpha = x[:, :3], x[:, 3:]
    rgb = rgb * alpha + (1 - alpha)
    side = min(height, width)
    rgb = F.interpolate(rgb, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    top, left = (height - side) // 2, (width - side) // 2
    rgb = F.pad(rgb, (left, width - side - left, top, height - side - top), value=1.0)
    return (rgb * 2 - 1).reshape(b, k, 3, height, width)


def model_batch(batch: dict, device: torch.device) -> dict:
    """The loader's uint8 pixels become floats on ``device``: the copy moves 4x fewer bytes, and on a GPU the
    conversion is free."""
    video = batch["video"].to(device, non_blocking=True).float().div_(127.5).sub_(1)
    rgba = batch["subjects"].to(device, non_blocking=True).float().div_(255)
    height, width = video.shape[-2:]
    return {
        "video": video,
        "captions": list(batch["caption"]),
        "subjects": subjects_for_model(rgba, batch["num_subjects"].to(device), height, width),
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

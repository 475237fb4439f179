"""Analytic matmul FLOPs of the DiT (what torch's FlopCounterMode counts: linear layers and attention).

Training costs 3x the forward (the backward computes gradients of inputs and of weights); MFU uses that model
count whatever activation checkpointing recomputes.
"""

from __future__ import annotations

from cinema_model.config import DitConfig


def dit_forward_flops(cfg: DitConfig, latent_frames: int, latent_height: int, latent_width: int,
                      text_tokens: int, subjects: int = 0) -> int:
    """Forward FLOPs for one sample of ``latent_frames`` x ``latent_height`` x ``latent_width`` latents with
    ``subjects`` subject frames and ``text_tokens`` conditioning tokens."""
    d, e, p = cfg.dim, cfg.time_embed_dim, cfg.patch_size
    frame_tokens = (latent_height // p) * (latent_width // p)
    video, visual = latent_frames * frame_tokens, (latent_frames + subjects) * frame_tokens
    n = text_tokens + visual
    patch = cfg.latent_channels * p * p
    embed = 2 * visual * patch * d + 2 * text_tokens * cfg.text_dim * d
    time = 2 * 2 * (d * e + e * e)  # the noisy and the clean (t = 0) embedding
    block = (
        2 * 2 * 2 * e * 6 * d  # two modulations, each for the noisy and the clean embedding
        + 4 * 2 * n * d * d  # q, k, v, out projections
        + 2 * 2 * n * n * d  # scores and weighted values
        + 2 * 2 * n * d * cfg.mlp_ratio * d  # feed-forward
    )
    final = 2 * e * 2 * d + 2 * video * d * patch
    return embed + time + cfg.layers * block + final


def dit_train_flops(*args, **kwargs) -> int:
    return 3 * dit_forward_flops(*args, **kwargs)

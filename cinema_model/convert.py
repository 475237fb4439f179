"""Weights of a diffusers `CogVideoXTransformer3DModel` (CogVideoX 1.0 layout, RoPE) in the CinemaDiT.

Every source weight has exactly one target and every target one source; anything else (CogVideoX 1.5's 3D patch
projection, the I2V "ofs" embedding, learned position embeddings) is an error rather than a silent partial load.
The patch embedding is a Conv2d with stride = kernel there and a Linear over (c, py, px) patches here: the same
bytes, read in the Linear's shape.

`cogvideox_weights` says where each DiT parameter is stored; the checkpoint is then read tensor by tensor (whole,
or each rank's rows), with no diffusers model and no full second copy.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from cinema_model.config import DitConfig
from cinema_model.stored_weights import StoredWeight, checkpoint_folder, checkpoint_weights

_RENAMES = [
    (r"patch_embed\.proj\.", "patch_embed."),
    (r"patch_embed\.text_proj\.", "text_embed."),
    (r"time_embedding\.linear_1\.", "time_embed.in_proj."),
    (r"time_embedding\.linear_2\.", "time_embed.out_proj."),
    (r"transformer_blocks\.(\d+)\.(norm[12])\.(linear|norm)\.", r"blocks.\1.\2.\3."),
    (r"transformer_blocks\.(\d+)\.attn1\.to_q\.", r"blocks.\1.attention.wq."),
    (r"transformer_blocks\.(\d+)\.attn1\.to_k\.", r"blocks.\1.attention.wk."),
    (r"transformer_blocks\.(\d+)\.attn1\.to_v\.", r"blocks.\1.attention.wv."),
    (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.attention.wo."),
    (r"transformer_blocks\.(\d+)\.attn1\.norm_q\.", r"blocks.\1.attention.q_norm."),
    (r"transformer_blocks\.(\d+)\.attn1\.norm_k\.", r"blocks.\1.attention.k_norm."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.", r"blocks.\1.feed_forward.w1."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.", r"blocks.\1.feed_forward.w2."),
    (r"norm_final\.", "final.norm_final."),
    (r"norm_out\.linear\.", "final.modulation."),
    (r"norm_out\.norm\.", "final.norm."),
    (r"proj_out\.", "final.proj."),
]


def cogvideox_name(name: str) -> str:
    """The CinemaDiT name of CogVideoX weight ``name``."""
    for pattern, repl in _RENAMES:
        new, n = re.subn(f"^{pattern}", repl, name)
        if n:
            return new
    raise KeyError(f"CogVideoX weight {name!r} has no counterpart in CinemaDiT")


def cogvideox_kwargs(cfg: DitConfig) -> dict:
    """`CogVideoXTransformer3DModel` arguments of the same architecture as ``cfg``."""
    return dict(num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=cfg.latent_channels,
                out_channels=cfg.latent_channels, time_embed_dim=cfg.time_embed_dim, text_embed_dim=cfg.text_dim,
                num_layers=cfg.layers, patch_size=cfg.patch_size, norm_eps=cfg.norm_eps,
                use_rotary_positional_embeddings=True)


def converted_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The CinemaDiT shape of CogVideoX weight ``name`` stored as ``shape``."""
    return (shape[0], math.prod(shape[1:])) if name == "patch_embed.proj.weight" else tuple(shape)


def cogvideox_weights(path: str, subfolder: str | None = None) -> dict[str, StoredWeight]:
    """CinemaDiT parameter name -> its weight in a diffusers CogVideoX transformer checkpoint (hub id or folder,
    ``diffusion_pytorch_model.safetensors`` or its sharded index), each stored weight mapped to a parameter of its
    own (``stored_weights.match_weights`` then checks the DiT's side)."""
    out: dict[str, StoredWeight] = {}
    for name, w in checkpoint_weights(checkpoint_folder(path, subfolder), "diffusion_pytorch_model").items():
        target = cogvideox_name(name)
        if target in out:
            raise KeyError(f"CogVideoX weights {out[target].name!r} and {name!r} both map to {target!r}")
        out[target] = replace(w, shape=converted_shape(name, w.stored_shape))
    return out

"""Weights of a diffusers `CogVideoXTransformer3DModel` (CogVideoX 1.0 layout, RoPE) in the CinemaDiT.

Every source weight has exactly one target and every target one source; anything else (CogVideoX 1.5's 3D patch
projection, the I2V "ofs" embedding, learned position embeddings) is an error rather than a silent partial load.
The patch embedding is a Conv2d with stride = kernel there and a Linear over (c, py, px) patches here.

`load_cogvideox_into` reads the checkpoint's safetensors file(s) tensor by tensor, straight into what the process
holds of each DiT parameter (all of it, or its FSDP2 shard's rows): no diffusers model, no full second copy.
"""

from __future__ import annotations

import math
import re

import torch

from cinema_model.config import DitConfig
from cinema_model.weights import checkpoint_folder, clean_name, load_rows_, stored_tensors

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


def _target_name(name: str) -> str:
    for pattern, repl in _RENAMES:
        new, n = re.subn(f"^{pattern}", repl, name)
        if n:
            return new
    raise KeyError(f"CogVideoX weight {name!r} has no counterpart in CinemaDiT")


def convert_cogvideox_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers CogVideoX transformer state dict -> CinemaDiT state dict."""
    out = {}
    for name, tensor in state.items():
        target = _target_name(name)
        out[target] = tensor.flatten(1) if name == "patch_embed.proj.weight" else tensor
    return out


def cogvideox_kwargs(cfg: DitConfig) -> dict:
    """`CogVideoXTransformer3DModel` arguments of the same architecture as ``cfg``."""
    return dict(num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=cfg.latent_channels,
                out_channels=cfg.latent_channels, time_embed_dim=cfg.time_embed_dim, text_embed_dim=cfg.text_dim,
                num_layers=cfg.layers, patch_size=cfg.patch_size, norm_eps=cfg.norm_eps,
                use_rotary_positional_embeddings=True)


def converted_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The CinemaDiT shape of CogVideoX weight ``name`` stored as ``shape``."""
    return (shape[0], math.prod(shape[1:])) if name == "patch_embed.proj.weight" else tuple(shape)


def load_cogvideox_into(dit: torch.nn.Module, path: str, subfolder: str | None = None) -> None:
    """Initialise ``dit`` (whole, or this rank's FSDP2 shards) from a diffusers CogVideoX transformer checkpoint (hub
    id or folder, ``diffusion_pytorch_model.safetensors`` or its sharded index), strictly: every stored weight has
    exactly one target of the same shape and every DiT parameter one stored weight. Weights are cast to the DiT's
    dtype as they are read."""
    folder = checkpoint_folder(path, subfolder)
    stored = stored_tensors(folder, "diffusion_pytorch_model")
    sources: dict[str, str] = {}
    for name in stored:
        target = _target_name(name)
        if target in sources:
            raise KeyError(f"CogVideoX weights {sources[target]!r} and {name!r} both map to {target!r}")
        sources[target] = name
    params = {clean_name(k): p for k, p in dit.named_parameters()}
    missing, unexpected = sorted(set(params) - set(sources)), sorted(set(sources) - set(params))
    if missing or unexpected:
        raise KeyError(f"CogVideoX checkpoint {folder} does not match the CinemaDiT: missing {missing[:8]}, "
                       f"unexpected {unexpected[:8]}")
    for target, param in params.items():
        name = sources[target]
        load_rows_(param, stored[name], converted_shape(name, stored[name].shape), f"CogVideoX weight {name!r}")

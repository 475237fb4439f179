"""Weights of a diffusers `CogVideoXTransformer3DModel` (CogVideoX 1.0 layout, RoPE) in the CinemaDiT.

Every source weight has exactly one target and every target one source; anything else (CogVideoX 1.5's 3D patch
projection, the I2V "ofs" embedding, learned position embeddings) is an error rather than a silent partial load.
The patch embedding is a Conv2d with stride = kernel there and a Linear over (c, py, px) patches here.
"""

from __future__ import annotations

import re

import torch

from cinema_model.config import DitConfig

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


def load_cogvideox_into(dit: torch.nn.Module, path: str, subfolder: str | None = None) -> None:
    """Initialise ``dit`` from a CogVideoX transformer checkpoint (hub id or folder), strictly."""
    from diffusers import CogVideoXTransformer3DModel

    source = CogVideoXTransformer3DModel.from_pretrained(path, subfolder=subfolder, torch_dtype=torch.float32)
    dit.load_state_dict(convert_cogvideox_state_dict(source.state_dict()), strict=True)

"""MM-DiT of the CogVideoX layout with subject (visual entity) tokens.

Text and visual tokens attend jointly in every block; each stream gets its own adaptive-norm shift/scale/gate
from the timestep embedding. The subject images' latents are patchified like video frames and appended after the
video tokens. They are clean, so their modulation comes from the embedding of t = 0, as HunyuanVideo's
token-replace gives clean tokens their own modulation; they are dropped before the output head (as in Wan VACE),
so the model never predicts, and the loss never sees, anything for them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cinema_model.config import DitConfig
from cinema_model.rope import apply_rope, rope_cos_sin, visual_positions

# CogVideoX was trained on integer timesteps 0..999; flow time t in [0, 1] is scaled onto that range.
TIMESTEP_SCALE = 1000.0


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features [cos, sin] of (B,) timesteps, as diffusers' `Timesteps(flip_sin_to_cos=True)`."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * TIMESTEP_SCALE * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.in_proj = nn.Linear(dim, out_dim)
        self.out_proj = nn.Linear(out_dim, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = timestep_features(t, self.in_proj.in_features).to(self.in_proj.weight.dtype)
        return self.out_proj(F.silu(self.in_proj(x)))


class Modulation(nn.Module):
    """LayerNorm shared by the streams, plus shift/scale/gate for the visual and the text stream."""

    def __init__(self, time_embed_dim: int, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(time_embed_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, temb: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """((shift, scale, gate) of the visual stream, the same of the text stream), each (B, 1, D)."""
        params = self.linear(F.silu(temb))[:, None].chunk(6, dim=-1)
        return params[:3], params[3:]


class JointAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.wq = nn.Linear(dim, heads * head_dim)
        self.wk = nn.Linear(dim, heads * head_dim)
        self.wv = nn.Linear(dim, heads * head_dim)
        self.q_norm = nn.LayerNorm(head_dim, eps=1e-6)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6)
        self.wo = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor, num_text: int, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None) -> torch.Tensor:
        """x = [text, visual] tokens; RoPE rotates the visual part only; ``mask`` (B, 1, 1, N) hides padding keys."""
        q, k, v = (w(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = (torch.cat([y[:, :, :num_text], apply_rope(y[:, :, num_text:], *rope)], dim=2) for y in (q, k))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x), approximate="tanh"))


def _modulated(norm: nn.LayerNorm, streams: list[torch.Tensor], mods: list[tuple]) -> torch.Tensor:
    return torch.cat([norm(x) * (1 + scale) + shift for x, (shift, scale, _) in zip(streams, mods)], dim=1)


def _gated(streams: list[torch.Tensor], mods: list[tuple], out: torch.Tensor) -> list[torch.Tensor]:
    parts = out.split([x.shape[1] for x in streams], dim=1)
    return [x + gate * y for x, (_, _, gate), y in zip(streams, mods, parts)]


class JointBlock(nn.Module):
    """One MM-DiT block over three streams: text, noisy video, clean subjects."""

    def __init__(self, cfg: DitConfig):
        super().__init__()
        self.norm1 = Modulation(cfg.time_embed_dim, cfg.dim, cfg.norm_eps)
        self.attention = JointAttention(cfg.dim, cfg.heads, cfg.head_dim)
        self.norm2 = Modulation(cfg.time_embed_dim, cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg.dim, cfg.mlp_ratio * cfg.dim)

    @staticmethod
    def _stream_mods(norm: Modulation, temb: torch.Tensor, temb_clean: torch.Tensor) -> list[tuple]:
        video, text = norm(temb)
        subjects, _ = norm(temb_clean)
        return [text, video, subjects]

    def forward(self, text: torch.Tensor, video: torch.Tensor, subjects: torch.Tensor, temb: torch.Tensor,
                temb_clean: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        streams = [text, video, subjects]
        mods = self._stream_mods(self.norm1, temb, temb_clean)
        out = self.attention(_modulated(self.norm1.norm, streams, mods), text.shape[1], rope, mask)
        streams = _gated(streams, mods, out)
        mods = self._stream_mods(self.norm2, temb, temb_clean)
        streams = _gated(streams, mods, self.feed_forward(_modulated(self.norm2.norm, streams, mods)))
        return tuple(streams)


class FinalLayer(nn.Module):
    def __init__(self, cfg: DitConfig):
        super().__init__()
        self.norm_final = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.modulation = nn.Linear(cfg.time_embed_dim, 2 * cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.proj = nn.Linear(cfg.dim, cfg.patch_size ** 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(temb))[:, None].chunk(2, dim=-1)
        return self.proj(self.norm(self.norm_final(x)) * (1 + scale) + shift)


def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """(B, T, C, h, w) -> (B, T*(h/p)*(w/p), C*p*p), tokens in (t, y, x) order, features in (c, py, px) order."""
    b, t, c, h, w = latents.shape
    x = latents.reshape(b, t, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, t * (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, shape: torch.Size, p: int) -> torch.Tensor:
    b, t, c, h, w = shape
    x = tokens.reshape(b, t, h // p, w // p, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(shape)


class CinemaDiT(nn.Module):
    """Velocity of the noisy video latents given the conditioning tokens and the clean subject latents.

    `blocks` is the list a trainer wraps one by one (activation checkpointing, compile, FSDP).
    """

    def __init__(self, cfg: DitConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.latent_channels * cfg.patch_size ** 2, cfg.dim)
        self.text_embed = nn.Linear(cfg.text_dim, cfg.dim)
        self.time_embed = TimestepEmbedder(cfg.dim, cfg.time_embed_dim)
        self.blocks = nn.ModuleList(JointBlock(cfg) for _ in range(cfg.layers))
        self.final = FinalLayer(cfg)

    def forward(self, video: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                subjects: torch.Tensor | None = None, subject_mask: torch.Tensor | None = None) -> torch.Tensor:
        """video (B, T, C, h, w) noisy latents at time t (B,) in [0, 1]; text (B, L, text_dim);
        subjects (B, K, C, h, w) clean latents with subject_mask (B, K) true where a subject is present.
        Returns the velocity, shaped like ``video``."""
        p = self.cfg.patch_size
        b, frames, _, h, w = video.shape
        if subjects is None:
            subjects = video.new_zeros(b, 0, *video.shape[2:])
        num_subjects = subjects.shape[1]
        # Inputs are cast to the weights' dtype here, and only the tokens: the timestep and the RoPE tables stay
        # float32 however the weights compute (as in diffusers), so training in bf16 sees the t that generate sees.
        dtype = self.patch_embed.weight.dtype
        x_text = self.text_embed(text.to(dtype))
        x_video = self.patch_embed(patchify(video, p).to(dtype))
        x_subjects = self.patch_embed(patchify(subjects, p).to(dtype))
        temb = self.time_embed(t.float())
        temb_clean = self.time_embed(torch.zeros_like(t, dtype=torch.float32))

        positions = visual_positions(frames, h // p, w // p, num_subjects, device=video.device)
        rope = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        mask = None
        if subject_mask is not None and not bool(subject_mask.all()):
            keep = subject_mask.repeat_interleave(x_subjects.shape[1] // max(num_subjects, 1), dim=1)
            mask = F.pad(keep, (x_text.shape[1] + x_video.shape[1], 0), value=True)[:, None, None, :]

        for block in self.blocks:
            x_text, x_video, x_subjects = block(x_text, x_video, x_subjects, temb, temb_clean, rope, mask)
        return unpatchify(self.final(x_video, temb), video.shape, p)

"""3D rotary position embedding of the visual tokens, in CogVideoX's layout.

Each head's channels are split into a temporal quarter and two spatial three-eighths, rotated in interleaved
pairs. Video tokens sit at (t, y, x) for t < T; subject k's tokens at (T + k, y, x): a temporal index outside the
video's range, so the subjects share the spatial frame but never a position with any video token.
"""

from __future__ import annotations

import torch


def visual_positions(frames: int, height: int, width: int, subjects: int, device=None) -> torch.Tensor:
    """(T*h*w + K*h*w, 3) integer (t, y, x) positions in token order: the video, then subject 0, 1, ..."""
    t = torch.arange(frames + subjects, device=device)
    y = torch.arange(height, device=device)
    x = torch.arange(width, device=device)
    return torch.stack(torch.meshgrid(t, y, x, indexing="ij"), dim=-1).reshape(-1, 3)


def _axis_angles(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)
    return torch.outer(pos.float(), freqs).repeat_interleave(2, dim=1)  # interleaved pairs


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (N, head_dim) float32, for (N, 3) positions."""
    dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
    angles = torch.cat([_axis_angles(positions[:, i], d, theta) for i, d in enumerate(dims)], dim=1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, D) queries or keys; computed in float32 as CogVideoX does."""
    real, imag = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)
    return (x.float() * cos + rotated * sin).to(x.dtype)

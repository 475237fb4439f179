"""Frozen 3D causal VAE: diffusers' CogVideoX VAE (8x spatial, 4x temporal compression, 16 latent channels).

Frame counts: the first frame is encoded alone, then one latent frame per 4 frames. diffusers decodes the first
three latents together, then two at a time, and its time upsampler keeps a first frame apart only in an odd-sized
chunk: an odd latent count (1 + 8k frames, 49 -> 13 latents) decodes each latent to its own frames, an even one
(45 -> 12) stretches latent 0 over four frames and shifts all the others by three. ``VideoConfig`` admits only
1 + 8k frames.
"""

from __future__ import annotations

import torch
from torch import nn

from cinema_model.config import VaeConfig
from cinema_model.frozen import freeze, placed


class VideoVae(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    @classmethod
    def load(cls, cfg: VaeConfig, dtype: torch.dtype, weights: bool = True,
             device: torch.device | None = None) -> "VideoVae":
        """Loaded once in ``dtype`` and moved to ``device`` (0.2 B parameters: a host copy on the way is small)."""
        from diffusers import AutoencoderKLCogVideoX

        if not weights and cfg.arch is not None:
            vae = AutoencoderKLCogVideoX(**cfg.arch)
        elif not weights:
            vae = AutoencoderKLCogVideoX.from_config(AutoencoderKLCogVideoX.load_config(cfg.path, subfolder=cfg.subfolder))
        else:
            vae = AutoencoderKLCogVideoX.from_pretrained(cfg.path, subfolder=cfg.subfolder, torch_dtype=dtype)
        return cls(freeze(placed(vae, device)))

    def set_memory(self, tiling: bool = False, slicing: bool = False) -> "VideoVae":
        """Peak-memory options of decoding and encoding, diffusers' own: ``tiling`` splits frames larger than half
        the VAE's sample size into overlapping 240x360 tiles blended at their seams (about a quarter of the memory
        at 480x720; diffusers' tile sizes, which fit every frame size that is a multiple of 16); ``slicing`` takes
        the videos of a batch one at a time."""
        self.vae.enable_tiling() if tiling else self.vae.disable_tiling()
        self.vae.enable_slicing() if slicing else self.vae.disable_slicing()
        return self

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> scaled latents (B, T, C, H/8, W/8), float32. The posterior mean, not a
        sample: the same clip always gives the same latents."""
        dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(video.transpose(1, 2).to(dtype)).latent_dist.mode()
        return (latents * self.vae.config.scaling_factor).transpose(1, 2).float()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, H, W) subject images -> (B, K, C, h, w): each a one-frame clip; absent slots stay zero."""
        b, k, _, h, w = images.shape
        out = images.new_zeros(b, k, self.latent_channels, h // 8, w // 8, dtype=torch.float32)
        if present.any():
            out[present] = self.encode(images[present][:, None])[:, 0]
        return out

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) -> (B, 1 + 4 (T - 1), 3, H, W) in [-1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        video = self.vae.decode(latents.transpose(1, 2).to(dtype) / self.vae.config.scaling_factor).sample
        return video.transpose(1, 2).float().clamp(-1, 1)

"""CLIP image embeddings (a vision tower with its projection), L2-normalised: what the aesthetic head scores,
near-duplicate removal compares (per clip), and subject identities are matched by (per reference crop)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ImageEmbedder:
    def __init__(self, processor, clip, device: str):
        self.processor, self.clip, self.device = processor, clip, device

    @property
    def width(self) -> int:
        return self.clip.config.projection_dim

    @classmethod
    def load(cls, path: str, dtype: str, device: str) -> "ImageEmbedder":
        """From ``path`` (a hub id, local cache only, or a folder); ``dtype`` on a GPU, float32 on a CPU."""
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        torch_dtype = getattr(torch, dtype) if device.startswith("cuda") else torch.float32
        clip = CLIPVisionModelWithProjection.from_pretrained(path, dtype=torch_dtype).to(device).eval()
        return cls(CLIPImageProcessor.from_pretrained(path), clip, device)

    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        """(N, width) float32 on the model's device, one per (H, W, 3) uint8 RGB image, in one forward pass.
        CLIP's own preprocessing (short side resized, centre crop): what the model's training images saw."""
        inputs = self.processor(images=images, return_tensors="pt", device=self.device)
        with torch.inference_mode():
            embeds = self.clip(pixel_values=inputs["pixel_values"].to(self.device, self.clip.dtype)).image_embeds
            return nn.functional.normalize(embeds.float(), dim=-1)

"""Aesthetic scores: CLIP image embeddings, L2-normalised, through the LAION "improved aesthetic predictor" head.

The head is that predictor's MLP (github.com/christophschuhmann/improved-aesthetic-predictor), with its state dict
keys ``layers.{0,2,4,6,7}.{weight,bias}``: e.g. ``sac+logos+ava1-l14-linearMSE.pth``, trained on the 768-d image
embeddings of openai/clip-vit-large-patch14. It predicts a mean human rating, about 1..10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from curation.config import AestheticConfig
from curation.models.embedding import ImageEmbedder
from curation.models.runtime import load_state_dict


class AestheticHead(nn.Module):
    """The predictor's MLP layer for layer: its dropouts do nothing at inference but number the state dict keys."""

    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


def load_head(path: str, width: int) -> AestheticHead:
    """The head saved at ``path`` (.safetensors, or a .pth/.pt read with weights_only), checked to take the
    ``width``-d embeddings of the CLIP it will be fed."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"aesthetic.head: no file {path} (a LAION aesthetic predictor head, "
                                "e.g. sac+logos+ava1-l14-linearMSE.pth)")
    state = load_state_dict(path)
    first = state.get("layers.0.weight") if isinstance(state, dict) else None
    if first is None:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"aesthetic.head {path} is not a LAION aesthetic predictor head (no layers.0.weight; "
                         f"found {keys})")
    if first.shape[1] != width:
        raise ValueError(f"aesthetic.head {path} takes {first.shape[1]}-d CLIP embeddings but aesthetic.clip_model "
                         f"gives {width}-d ones: a head scores only embeddings of the CLIP it was trained on "
                         "(sac+logos+ava1-l14-linearMSE.pth: openai/clip-vit-large-patch14, 768-d)")
    head = AestheticHead(width)
    head.load_state_dict(state)
    return head.eval()


class AestheticScorer:
    """A CLIP image embedder and a head: ``scorer(videos)`` gives each clip the mean score of its frames, with
    every frame of every clip in one forward pass."""

    def __init__(self, embed: ImageEmbedder, head: AestheticHead):
        self.embed, self.head = embed, head

    @classmethod
    def load(cls, cfg: AestheticConfig, device: str) -> "AestheticScorer":
        """From ``cfg.clip_model`` (a hub id, local cache only, or a folder) and ``cfg.head`` (a file)."""
        embed = ImageEmbedder.load(cfg.clip_model, cfg.dtype, device)
        return cls(embed, load_head(cfg.head, embed.width).to(device))  # float32: 1 MB, scores keep their precision

    def __call__(self, videos: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        """``videos``: one (T, H, W, 3) uint8 RGB array per clip. Each clip's score, and its embedding: the mean
        of its frames' normalised embeddings, normalised (float32), which near-duplicate removal compares."""
        embeds = self.embed([f for v in videos for f in v])
        with torch.inference_mode():
            scores = self.head(embeds).squeeze(-1)
            sizes = [len(v) for v in videos]
            means = [nn.functional.normalize(e.mean(0), dim=0) for e in embeds.split(sizes)]
            return [(float(s.mean()), m.cpu().numpy()) for s, m in zip(scores.split(sizes), means)]

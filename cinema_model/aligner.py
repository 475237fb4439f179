"""AlignerNet (Kosmos-G): maps the MLLM's hidden states into the frozen T5 encoder's feature space.

An encoder reads the in-projected MLLM states; a decoder of learned queries (one per T5 token) attends to them;
the out-projection gives T5-width tokens the DiT takes in place of T5 features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cinema_model.config import AlignerConfig


class AlignerNet(nn.Module):
    no_weight_decay = ("queries",)  # learned tokens, like embeddings: decay would only shrink them

    def __init__(self, cfg: AlignerConfig, in_dim: int, out_dim: int, num_queries: int):
        super().__init__()
        self.in_proj = nn.Linear(in_dim, cfg.width)
        layer = dict(d_model=cfg.width, nhead=cfg.heads, dim_feedforward=4 * cfg.width, dropout=0.0,
                     activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), cfg.encoder_layers,
                                             norm=nn.LayerNorm(cfg.width), enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.randn(num_queries, cfg.width) * 0.02)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), cfg.decoder_layers,
                                             norm=nn.LayerNorm(cfg.width))
        self.out_proj = nn.Linear(cfg.width, out_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, L, in_dim) with mask (B, L) true on real tokens -> (B, num_queries, out_dim)."""
        padding = ~mask.bool()
        memory = self.encoder(self.in_proj(states), src_key_padding_mask=padding)
        queries = self.queries.expand(states.shape[0], -1, -1)
        return self.out_proj(self.decoder(queries, memory, memory_key_padding_mask=padding))


def alignment_loss(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSE + (1 - cosine similarity) per token, against T5 features of the same text, over all T5 positions
    (the DiT reads all of them, padding included, as CogVideoX does)."""
    pred, target = pred.float(), target.float()
    mse = F.mse_loss(pred, target)
    cosine = 1 - F.cosine_similarity(pred, target, dim=-1).mean()
    return {"loss": mse + cosine, "mse": mse.detach(), "cosine": cosine.detach()}

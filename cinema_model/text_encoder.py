"""Frozen T5 encoder: the AlignerNet's target space and the conditioning of the "MLLM replaced by T5" ablation."""

from __future__ import annotations

import torch
from torch import nn

from cinema_model.config import T5Config
from cinema_model.frozen import freeze, hf_config, onto, placed


class T5TextEncoder(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, max_length: int):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def load(cls, cfg: T5Config, dtype: torch.dtype, weights: bool = True,
             device: torch.device | None = None) -> "T5TextEncoder":
        from transformers import AutoTokenizer, T5EncoderModel

        if not weights:
            return cls(freeze(placed(T5EncoderModel(hf_config(cfg.arch, cfg.path)), device)), None, cfg.max_length)
        model = T5EncoderModel.from_pretrained(cfg.path, dtype=dtype, **onto(device))
        return cls(freeze(model), AutoTokenizer.from_pretrained(cfg.path), cfg.max_length)

    @property
    def hidden_size(self) -> int:
        return self.model.config.d_model

    @torch.no_grad()
    def forward(self, captions: list[str]) -> torch.Tensor:
        """(B, max_length, hidden) features. Padded to max_length and encoded without an attention mask, as the
        CogVideoX pipeline does: its DiT was trained on exactly these padded features."""
        ids = self.tokenizer(captions, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids
        return self.model(input_ids=ids.to(next(self.model.parameters()).device)).last_hidden_state

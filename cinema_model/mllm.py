"""Frozen Qwen2-VL encoder: reads the instruction, the caption and the K subject images in one user turn."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from cinema_model.config import MllmConfig
from cinema_model.frozen import freeze, hf_config, onto, placed


class MllmEncoder(nn.Module):
    def __init__(self, model: nn.Module, processor, instruction: str):
        super().__init__()
        self.model = model  # the base Qwen2-VL model (vision tower + language model), without the LM head
        self.processor = processor
        self.instruction = instruction

    @classmethod
    def load(cls, cfg: MllmConfig, dtype: torch.dtype, weights: bool = True,
             device: torch.device | None = None) -> "MllmEncoder":
        """From the checkpoint at ``cfg.path``, once, in ``dtype``, onto ``device``; with ``weights=False`` only its
        architecture (for meta builds)."""
        from transformers import AutoModel, AutoProcessor

        if not weights:
            model = placed(AutoModel.from_config(hf_config(cfg.arch, cfg.path)), device)
            return cls(freeze(model), None, cfg.instruction)
        model = AutoModel.from_pretrained(cfg.path, dtype=dtype, **onto(device))
        return cls(freeze(model), AutoProcessor.from_pretrained(cfg.path), cfg.instruction)

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    def prompt(self, caption: str, num_images: int) -> str:
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": self.instruction.format(caption=caption)}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)

    @torch.no_grad()
    def forward(self, captions: list[str], images: list[list[Image.Image]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states (B, L, hidden) and attention mask (B, L) of the prompts; ``images[i]`` holds
        sample i's subject images (0 to 6)."""
        flat = [im for sample in images for im in sample]
        inputs = self.processor(text=[self.prompt(c, len(ims)) for c, ims in zip(captions, images)],
                                images=flat or None, return_tensors="pt", padding=True)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        return self.model(**inputs).last_hidden_state, inputs["attention_mask"].bool()

"""The pretrained parts the paper keeps frozen (MLLM, T5, VAE): loaded with `from_pretrained`, never trained."""

from __future__ import annotations

import torch
from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def onto(device: torch.device | None) -> dict:
    """`from_pretrained` arguments that load straight onto ``device``: on a GPU the weights go there tensor by tensor
    and never sit in host memory whole; nothing for the CPU."""
    if device is None or device.type in ("cpu", "meta"):
        return {}
    return {"device_map": {"": str(device)}}  # one device: transformers attaches no dispatch hooks


def placed(module: nn.Module, device: torch.device | None) -> nn.Module:
    """``module`` moved to ``device`` (left where it is without one, or on the meta device)."""
    return module if device is None or device.type == "meta" else module.to(device)


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def hf_config(arch: dict | None, path: str, subfolder: str | None = None):
    """The transformers config of a frozen part: from ``arch`` (no files needed) or from the checkpoint."""
    from transformers import AutoConfig

    if arch is not None:
        return AutoConfig.for_model(**arch)
    return AutoConfig.from_pretrained(path, subfolder=subfolder or "")

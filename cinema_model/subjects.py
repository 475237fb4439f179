"""Subject (reference) images as the model takes them: RGB on white, letterboxed to the video's frame size.

The dataset's subject crops are RGBA with the background removed; compositing on white and fitting them into the
video frame lets the VAE encode each as one latent frame of the video's spatial size. ``frame_subject`` is the one
way a subject image is framed: the training loader calls it on a shard's PNG at the clip's bucket size, ``generate``
on the user's image at the video size, so both reach the model as the same pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from common.contract import MAX_SUBJECTS


def frame_subject(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """(3, height, width) uint8: alpha composited on white, resized to fit the frame, centred on white."""
    rgba = image.convert("RGBA")
    rgb = Image.new("RGB", rgba.size, "white")
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    scale = min(width / rgb.width, height / rgb.height)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(rgb.resize(size, Image.BICUBIC), ((width - size[0]) // 2, (height - size[1]) // 2))
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous()


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1], as the VAE and the model take them."""
    return pixels.float().div_(127.5).sub_(1)


def subject_tensor(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """(3, height, width) in [-1, 1]: ``frame_subject`` in the model's range."""
    return to_model_range(frame_subject(image, height, width))


def pad_subjects(samples: list[list[torch.Tensor]], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample lists of (3, H, W) subject tensors -> (B, K_max, 3, H, W) zero-padded and counts (B,)."""
    counts = [len(s) for s in samples]
    if max(counts, default=0) > MAX_SUBJECTS:
        raise ValueError(f"at most {MAX_SUBJECTS} subjects per sample, got {max(counts)}")
    images = torch.zeros(len(samples), max(counts, default=0), 3, height, width)
    for i, sample in enumerate(samples):
        for k, image in enumerate(sample):
            images[i, k] = image
    return images, torch.tensor(counts, dtype=torch.long)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> RGB images."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


def presence_mask(counts: torch.Tensor, max_subjects: int) -> torch.Tensor:
    """(B, K) true for the first counts[i] slots of sample i."""
    return torch.arange(max_subjects, device=counts.device)[None] < counts[:, None]

"""Files `generate` writes: the video as H.264 mp4 (PyAV, yuv420p) and a PNG contact sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def write_mp4(frames: torch.Tensor, path: str | Path, fps: int) -> None:
    import av

    pixels = to_uint8(frames)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = pixels.shape[2], pixels.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def contact_sheet(subjects: torch.Tensor, frames: torch.Tensor, columns: int = 4) -> Image.Image:
    """Subject images stacked on the left, ``columns`` evenly spaced frames in a row on the right; every tile
    has the frame size."""
    h, w = frames.shape[-2:]
    picks = np.linspace(0, len(frames) - 1, min(columns, len(frames))).round().astype(int)
    sheet = Image.new("RGB", (w * (1 + len(picks)), h * max(1, len(subjects))), "black")
    for k, tile in enumerate(to_uint8(subjects)):
        sheet.paste(Image.fromarray(tile), (0, k * h))
    for i, tile in enumerate(to_uint8(frames[picks])):
        sheet.paste(Image.fromarray(tile), ((i + 1) * w, 0))
    return sheet

"""CPU pre-processing for the model stages: decode a clip once, sample frames, resize, encode compactly.

Frames travel between stages as encoded images (JPEG for the MLLM's small frames, PNG for subject crops), never as
raw arrays; a stage that needs full-size frames (subjects, text) decodes them from the clip's MP4.
"""

from __future__ import annotations

import io
import math

import av
import cv2
import numpy as np

PATCH = 28  # Qwen2-VL: 14-px patches merged 2x2; frame sides must be multiples of this


def sample_indices(num_frames: int, n: int) -> list[int]:
    """``n`` frames spread evenly over the clip: the centre of each of ``n`` equal segments."""
    n = min(n, num_frames)
    return [int((i + 0.5) * num_frames / n) for i in range(n)]


def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """Largest size with the same aspect ratio, at most ``max_pixels``, both sides multiples of PATCH."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    w = max(PATCH, math.floor(width * scale / PATCH) * PATCH)
    h = max(PATCH, math.floor(height * scale / PATCH) * PATCH)
    return w, h


def decode_frames(mp4: bytes, indices: set[int]) -> dict[int, np.ndarray]:
    """The frames at ``indices`` (decode order = presentation order for our H.264 clips), as RGB arrays."""
    out: dict[int, np.ndarray] = {}
    last, decoded = max(indices), 0
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if decoded in indices:
                out[decoded] = frame.to_ndarray(format="rgb24")
            decoded += 1
            if decoded > last:
                break
    missing = indices - out.keys()
    if missing:
        raise ValueError(f"the clip has no frame {min(missing)} (decoded {decoded} frames)")
    return out


def encode_image(rgb: np.ndarray, ext: str, quality: int = 90) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"{ext} encoding failed")
    return data.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

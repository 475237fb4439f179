"""Binary masks: COCO-style RLE for the manifest, clean-up rules, overlap, and RGBA reference crops.

Masks are boolean (H, W) arrays inside a stage; between stages and in the dataset they exist only as RLE.
"""

from __future__ import annotations

import json

import cv2
import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    """Uncompressed COCO RLE as JSON: run lengths over the column-major pixels, starting with a run of zeros."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return json.dumps({"size": [h, w], "counts": counts})


def clean_mask(mask: np.ndarray, kernel: int, min_area: int, max_components: int) -> np.ndarray | None:
    """Opening (drops specks) then closing (fills pinholes), then pieces below ``min_area`` pixels are removed.
    Returns None for a mask that ends up tiny or in more than ``max_components`` pieces (irregular)."""
    m = np.asarray(mask, dtype=np.uint8)
    if kernel > 1:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
        m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_OPEN, k), cv2.MORPH_CLOSE, k)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    if not big or len(big) > max_components:
        return None
    return np.isin(labels, big)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1) of a non-empty mask, ends exclusive."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def rgba_crop(image_rgb: np.ndarray, mask: np.ndarray) -> bytes:
    """PNG of the mask's box: the pixels under the mask, fully transparent black elsewhere."""
    x0, y0, x1, y1 = bbox(mask)
    alpha = mask[y0:y1, x0:x1]
    rgba = np.zeros((y1 - y0, x1 - x0, 4), dtype=np.uint8)
    rgba[alpha, :3] = image_rgb[y0:y1, x0:x1][alpha]
    rgba[alpha, 3] = 255
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise ValueError("PNG encoding failed")
    return png.tobytes()

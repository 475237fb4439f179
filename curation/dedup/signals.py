"""The two near-duplicate signals a clip carries in its manifest row, and their similarities.

- ``fingerprint``: a 64-bit DCT sign hash of each of ``FRAMES`` frames spread over the clip, made in the scene pass
  from the gray analysis frame it already has (a few microseconds a frame). The hash keeps the sign of the 63 lowest
  AC coefficients of the frame's 32x32 DCT: a re-encode, a resize, a colour or brightness change keep the signs,
  and a mirrored frame flips exactly those of odd horizontal frequency, so the mirrored copy's hash is an XOR away
  (``MIRROR``) and matches without storing a second hash.
- ``embedding``: the mean of the L2-normalised CLIP image embeddings of the frames the aesthetic stage scored,
  normalised again; stored as float16.

Both travel as text (hex, base64), as every value of a clip's JSON member does.
"""

from __future__ import annotations

import base64
import re

import cv2
import numpy as np

FRAMES = 4  # frames hashed per clip, at the middles of its quarters
BITS = 63  # AC coefficients of the 8x8 lowest frequencies
_WEIGHTS = np.left_shift(np.uint64(1), np.arange(BITS, dtype=np.uint64))
_HEX = re.compile(f"[0-9a-fA-F]{{{16 * FRAMES}}}")
MIRROR = int(sum(1 << (u * 8 + v - 1) for u in range(8) for v in range(8) if (u or v) and v % 2))


def frame_hash(gray: np.ndarray) -> int:
    """The DCT sign hash of one gray frame (any size)."""
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    ac = cv2.dct(small)[:8, :8].ravel()[1:]  # row = vertical frequency u, column = horizontal v
    return int(np.sum(_WEIGHTS[ac > 0], dtype=np.uint64))


def clip_frames(start: int, end: int) -> list[int]:
    """The frames of [start, end) a fingerprint hashes: the middles of its quarters."""
    n = end - start
    return [start + (2 * k + 1) * n // (2 * FRAMES) for k in range(FRAMES)]


def fingerprint(hashes: list[int]) -> str:
    """A clip's fingerprint from its frames' hashes: 16 hex digits each."""
    return "".join(f"{h:016x}" for h in hashes)


def fingerprint_array(texts: list[str]) -> np.ndarray:
    """(N, FRAMES) uint64 from fingerprints; ValueError naming the first that is not one."""
    for t in texts:
        if not isinstance(t, str) or not _HEX.fullmatch(t):
            raise ValueError(f"fingerprint {t!r} is not {FRAMES} hashes of 16 hex digits")
    return np.frombuffer(bytes.fromhex("".join(texts)), ">u8").astype(np.uint64).reshape(len(texts), FRAMES)


def fingerprint_bits(hashes: np.ndarray) -> np.ndarray:
    """(N, FRAMES * BITS) float32 in {-1, 1}: fingerprints as vectors, whose dot products count equal bits."""
    bits = (hashes[..., None] >> np.arange(BITS, dtype=np.uint64)) & np.uint64(1)
    return bits.reshape(len(hashes), -1).astype(np.float32) * 2 - 1


_FLIPS = np.tile(np.array([-1.0 if MIRROR >> k & 1 else 1.0 for k in range(BITS)], dtype=np.float32), FRAMES)


def mirror_invariant(bits: np.ndarray) -> np.ndarray:
    """The bits a mirror image keeps (even horizontal frequencies): what fingerprints are clustered by, so a clip
    and its mirrored copy fall in the same cluster."""
    return bits[:, _FLIPS > 0]


def fingerprint_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - (Hamming distance / bits) of every clip of ``a`` (N, bits) to every clip of ``b`` (M, bits), both from
    ``fingerprint_bits``, whichever of b and its mirror image is nearer: (N, M) float32."""
    dot = np.maximum(a @ b.T, a @ (b * _FLIPS).T)
    return 0.5 + dot / (2 * a.shape[1])


def encode_embedding(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def embedding_array(texts: list[str]) -> np.ndarray:
    """(N, D) float32, L2-normalised, from embeddings; ValueError naming the first that is not one, or when their
    sizes differ (clips scored by different CLIPs)."""
    rows = []
    for t in texts:
        try:
            rows.append(np.frombuffer(base64.b64decode(t, validate=True), dtype="<f2"))
        except (TypeError, ValueError):
            raise ValueError(f"embedding {str(t)[:40]!r}... is not base64 of float16 values") from None
    if len({len(r) for r in rows}) > 1:
        raise ValueError(f"embeddings of {sorted({len(r) for r in rows})} dimensions: clips were scored by different "
                         "CLIP models (aesthetic.clip_model); dedup them as separate datasets")
    out = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

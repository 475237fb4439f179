"""Precomputed features: the frozen encoders' outputs for every clip, beside the shards they were made from.

Layout under a dataset root (``python -m training.precompute`` writes it, the trainer's loader reads it):

    ROOT/features/meta.json              what they were made with (encoders, dtype, frame count, fps, buckets)
    ROOT/features/uncond.safetensors     the conditioning encoder's states of the empty prompt with no images
    ROOT/features/<shard>.tar            one sample per clip the loader could use, in the shard's order:
                                         <key>.json, <key>.caption.txt (copied), <key>.features.safetensors
    ROOT/features/done/<shard>.json      the shard's commit marker (written after its tar): only a marker makes
                                         a features shard part of the set

``<key>.features.safetensors`` holds ``latents`` (T, C, H/8, W/8), ``subject_latents`` (K, C, H/8, W/8), and
``text_states`` (L, D) with ``text_mask`` (L,): the states of the caption and the K subject images, without
padding. Tensors are in the frozen parts' dtype (bfloat16 at the full preset, where the encoders compute in it:
lossless). Everything is safetensors or JSON; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from cinema_model.config import CinemaConfig, latent_frames
from common import contract as C
from common.shard_reader import RawSample, parse_json
from common.storage import Storage
from common.typed_config import to_dict

from ..config import DataConfig, JobError
from .decode import SampleError, _batch_tensor

FEATURES_DIR = "features"
META = "meta.json"
UNCOND = "uncond.safetensors"
MARKERS_DIR = "done"
FEATURES = "features.safetensors"
FIELDS = (C.JSON, C.CAPTION, FEATURES)  # the members of a features sample
FORMAT = 1
_KEYS = ("latents", "subject_latents", "text_states", "text_mask")


def made_with(cfg: CinemaConfig, data: DataConfig) -> dict:
    """What a set of features depends on: the conditioning encoder and the VAE (checkpoint, architecture,
    instruction), their dtype, and how clips are cut (frames, fps, buckets, subjects, and which crop stands for each
    subject: epoch 0's draw of data.subject_references). A trainer whose job differs in any of these refuses the
    features."""
    cond = cfg.ablation.conditioning
    return {
        "format": FORMAT,
        "conditioning": cond,
        "encoder": to_dict(cfg.mllm if cond == "mllm" else cfg.t5),
        "vae": to_dict(cfg.vae),
        "dtype": cfg.frozen_dtype,
        "frames": data.frames,
        "target_fps": data.target_fps,
        "buckets": [list(b) for b in data.buckets],
        "max_subjects": data.max_subjects,
        "subject_references": data.subject_references,
    }


def digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def differences(saved: dict, expected: dict, prefix: str = "") -> list[str]:
    """'key: saved != expected' for each leaf that differs."""
    out = []
    for k in sorted(set(saved) | set(expected)):
        a, b = saved.get(k), expected.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {json.dumps(a)} (features) != {json.dumps(b)} (this job)")
    return out


def dataset_root(shard_url: str) -> str:
    """The dataset root of a committed shard URL (ROOT/shards/<name>.tar)."""
    root, sep, _ = shard_url.rpartition(f"/{C.SHARDS_DIR}/")
    if not sep:
        raise JobError(f"{shard_url}: precomputed features are found beside a dataset's {C.SHARDS_DIR}/ folder; "
                       "give the dataset root (or its shard URLs) in data.urls")
    return root


def shard_stem(shard_url: str) -> str:
    return shard_url.rsplit("/", 1)[-1].removesuffix(".tar")


def features_url(storage: Storage, shard_url: str) -> str:
    return storage.join(dataset_root(shard_url), FEATURES_DIR, shard_stem(shard_url) + ".tar")


def marker_url(storage: Storage, shard_url: str) -> str:
    return storage.join(dataset_root(shard_url), FEATURES_DIR, MARKERS_DIR, shard_stem(shard_url) + ".json")


def committed(storage: Storage, root: str) -> set[str]:
    """Stems of the shards whose features are committed under ``root``."""
    markers = storage.list(storage.join(root, FEATURES_DIR, MARKERS_DIR), ".json")
    return {m.rsplit("/", 1)[-1].removesuffix(".json") for m in markers}


def read_meta(storage: Storage, root: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(storage.join(root, FEATURES_DIR, META)))
    except FileNotFoundError:
        return None


def check_meta(meta: dict, expected: dict, root: str) -> None:
    diff = differences(meta.get("made_with", {}), expected)
    if diff:
        raise JobError(f"{storage_path(root)}: the features were made with another model or clip shape than this "
                       f"job's: {'; '.join(diff)}. Precompute them again for this job into another dataset copy, "
                       "or train with model.encoders=replicated")


def storage_path(root: str) -> str:
    return f"{root.rstrip('/')}/{FEATURES_DIR}"


# -- one sample -----------------------------------------------------------------------------------------------


def encode_features(latents: torch.Tensor, subject_latents: torch.Tensor, text_states: torch.Tensor,
                    text_mask: torch.Tensor) -> bytes:
    tensors = dict(zip(_KEYS, (latents, subject_latents, text_states, text_mask.bool())))
    return save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


@dataclass
class FeatureSample:
    key: str
    bucket: int
    latents: torch.Tensor  # (T, C, h, w)
    subject_latents: torch.Tensor  # (K, C, h, w)
    text_states: torch.Tensor  # (L, D)
    text_mask: torch.Tensor  # (L,) bool
    caption: str
    meta: dict


def _latent_shape(cfg: DataConfig, bucket: int) -> tuple[int, int, int]:
    frames, height, width = cfg.bucket_shape(bucket)
    return latent_frames(frames), height // 8, width // 8


def decode_features(raw: RawSample, cfg: DataConfig) -> FeatureSample:
    m = raw.members
    if FEATURES not in m:
        raise SampleError("no features member")
    try:
        t = load_tensors(m[FEATURES])
    except SafetensorError as e:
        raise SampleError(f"features member is not safetensors: {e}") from None
    if sorted(t) != sorted(_KEYS):
        raise SampleError(f"features member holds {sorted(t)}, not {sorted(_KEYS)}")
    shape = (t["latents"].shape[0], *t["latents"].shape[-2:])
    buckets = [b for b in range(cfg.num_buckets) if _latent_shape(cfg, b) == shape]
    if not buckets or len(t["subject_latents"]) > cfg.max_subjects:
        raise SampleError(f"features of latent shape {shape} (frames, height, width) fit no bucket of "
                          f"frames {cfg.frames} x sizes {cfg.buckets}")
    meta = parse_json(m[C.JSON]) if C.JSON in m else {}
    caption = m[C.CAPTION].decode("utf-8") if C.CAPTION in m else ""
    return FeatureSample(raw.key, buckets[0], t["latents"], t["subject_latents"], t["text_states"],
                         t["text_mask"].bool(), caption, meta)


def collate_features(samples: list[FeatureSample], max_subjects: int) -> dict:
    """One batch of one bucket: latents (B, T, C, h, w), subject_latents zero-padded to max_subjects with
    num_subjects and subject_mask, text_states (B, L_max, D) zero-padded on the right with text_mask."""
    first = samples[0]
    b, length = len(samples), max(len(s.text_states) for s in samples)
    latents = _batch_tensor(b, *first.latents.shape, dtype=first.latents.dtype)
    subjects = _batch_tensor(b, max_subjects, *first.latents.shape[1:], dtype=first.latents.dtype).zero_()
    states = _batch_tensor(b, length, first.text_states.shape[-1], dtype=first.text_states.dtype).zero_()
    mask = _batch_tensor(b, length, dtype=torch.bool).zero_()
    for i, s in enumerate(samples):
        latents[i].copy_(s.latents)
        subjects[i, :len(s.subject_latents)] = s.subject_latents
        states[i, :len(s.text_states)] = s.text_states
        mask[i, :len(s.text_mask)] = s.text_mask
    counts = torch.tensor([len(s.subject_latents) for s in samples], dtype=torch.long)
    return {"key": [s.key for s in samples], "caption": [s.caption for s in samples],
            "meta": [s.meta for s in samples], "latents": latents, "subject_latents": subjects,
            "num_subjects": counts, "subject_mask": torch.arange(max_subjects)[None] < counts[:, None],
            "text_states": states, "text_mask": mask}


# -- the trainer's view -----------------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """The features of a run's shards: their tar URLs in the shards' order, and the unconditional states."""

    shards: list[str]
    uncond_states: torch.Tensor  # (L0, D)
    uncond_mask: torch.Tensor  # (L0,) bool

    @property
    def hidden_size(self) -> int:
        return self.uncond_states.shape[-1]


def open_features(shards: list[str], cfg: CinemaConfig, data: DataConfig) -> FeatureSet:
    """The committed features of ``shards``, checked against what this job would make; JobError (one message)
    when they are missing, partial, or made with another model, dtype, frame count, fps, bucket or choice of
    subject references."""
    storage = Storage(data.storage)
    expected = made_with(cfg, data)
    roots = list(dict.fromkeys(dataset_root(s) for s in shards))
    uncond = None
    for root in roots:
        meta = read_meta(storage, root)
        if meta is None:
            raise JobError(f"{storage_path(root)}: no precomputed features (no {META}); write them with "
                           "`python -m training.precompute JOB.yaml` (the same job file), or train with "
                           "model.encoders=replicated")
        check_meta(meta, expected, root)
        done = committed(storage, root)
        missing = [s for s in shards if dataset_root(s) == root and shard_stem(s) not in done]
        if missing:
            raise JobError(f"{storage_path(root)}: {len(missing)} shard(s) have no committed features (first: "
                           f"{missing[0]}); rerun `python -m training.precompute JOB.yaml`: it does only those")
        if uncond is None:
            t = load_tensors(storage.read_bytes(storage.join(root, FEATURES_DIR, UNCOND)))
            uncond = t["states"], t["mask"].bool()
    return FeatureSet([features_url(storage, s) for s in shards], *uncond)

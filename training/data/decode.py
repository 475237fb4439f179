"""One raw sample -> tensors: the clip at its aspect-ratio bucket, subject crops, caption, metadata.

Every field is parsed by a format-specific decoder (H.264 via PyAV, PNG via Pillow, UTF-8, JSON); nothing is
ever unpickled.
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter
from dataclasses import dataclass, field

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from cinema_model.subjects import frame_subject
from common import contract as C
from common.shard_reader import RawSample, parse_json

from ..config import DataConfig
from .identities import OtherClips


class SampleError(ValueError):
    """The sample cannot be used (a missing or malformed field)."""


class TooShort(SampleError):
    """The clip holds no window: fewer frames at the configured frame step than the shortest of data.frames."""


# What a broken sample can raise while decoding; anything else is a bug and propagates.
DECODE_ERRORS = (SampleError, av.error.FFmpegError, OSError, ValueError, Image.DecompressionBombError)


@dataclass
class Sample:
    key: str
    bucket: int  # DataConfig.bucket(frames, size)
    video: torch.Tensor | None  # (F, 3, H, W) uint8; None when only captions are read
    subjects: torch.Tensor | None  # (K, 3, H, W) uint8 RGB, framed as generate frames them; K <= max_subjects
    caption: str
    meta: dict
    # Where each subject's crop came from (references_same_clip, _other_frames, _other_clip) and the other-clip
    # crops that could not be used (references_unreadable): counted when the sample is trained on.
    references: Counter = field(default_factory=Counter)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> int:
    """The bucket whose aspect ratio is nearest in log scale (so 2:1 and 1:2 are equally far from 1:1)."""
    ratio = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][1] / buckets[i][0]) - ratio))


def decode_clip(mp4: bytes, cfg: DataConfig) -> tuple[int, torch.Tensor]:
    """(bucket, (F, 3, H, W) uint8): frames from the clip's first, one every round(fps / target_fps), as many as the
    longest of ``cfg.frames`` the clip holds, resized to cover the bucket's size and centre-cropped. A clip shorter
    than the shortest is TooShort: padding by repeating frames would teach the model frozen motion."""
    window = cfg.window
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # loader workers are the parallelism
        size = nearest_bucket(stream.width, stream.height, cfg.buckets)
        height, width = cfg.buckets[size]
        if window.fps is not None and not stream.average_rate:
            raise SampleError("clip has no frame rate")
        step = window.step(float(stream.average_rate or 1))
        frames = []
        for i, frame in enumerate(container.decode(stream)):
            if i % step:
                continue
            scale = max(height / frame.height, width / frame.width)
            sw, sh = max(width, round(frame.width * scale)), max(height, round(frame.height * scale))
            rgb = frame.to_ndarray(format="rgb24", width=sw, height=sh, interpolation="AREA")
            top, left = (sh - height) // 2, (sw - width) // 2
            frames.append(rgb[top:top + height, left:left + width])
            if len(frames) == cfg.frames[-1]:
                break
    count = window.longest(len(frames))
    if count is None:
        raise TooShort(f"clip has {len(frames)} frames at step {step}, the shortest window takes {cfg.frames[0]}")
    return cfg.bucket(count, size), torch.from_numpy(np.stack(frames[:count])).permute(0, 3, 1, 2)


def check_length(meta: dict, cfg: DataConfig) -> None:
    """TooShort, without decoding, for a clip whose manifest row (frame rate, frame count) holds no window."""
    fps, count = meta.get("fps"), meta.get("num_frames")
    if isinstance(fps, (int, float)) and isinstance(count, int) and fps > 0 and \
            cfg.window.frames_for(fps, count) is None:
        raise TooShort(f"clip has {count} frames at {fps:g} fps: {(count - 1) // cfg.window.step(fps) + 1} at step "
                       f"{cfg.window.step(fps)}, the shortest window takes {cfg.frames[0]}")


def decode_subject(png: bytes, height: int, width: int) -> torch.Tensor:
    """(3, height, width) uint8: the RGBA crop framed as ``generate`` frames a subject image."""
    with Image.open(io.BytesIO(png), formats=["PNG"]) as image:
        return frame_subject(image, height, width)


def media_field(name: str) -> bool:
    """Members that need a decode: the clip and the subject crops."""
    return name == C.MP4 or name.endswith(".png")


# What an other-clip crop can fail with (its read or its PNG): the subject falls back to its own references.
CROP_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def decode_subjects(raw: RawSample, cfg: DataConfig, epoch: int, others: OtherClips | None, height: int,
                    width: int) -> tuple[torch.Tensor, Counter]:
    """(K, 3, height, width) uint8: per subject k of the sample (those with a keyframe crop, subject_k.png), the
    crop ``cfg.subject_references`` chooses, framed; and where each came from. other_clip takes one of the
    subject's crops in other clips (``others``), else other_frames takes one of its reference crops from other
    frames of the clip (subject_k_refR.png), else same_clip its keyframe crop. Among several, one is drawn by an RNG
    of (seed, epoch, key, k) alone, so a resumed run, which decodes its held samples again, draws the same."""
    m, counts, framed = raw.members, Counter(), []
    for k in range(cfg.max_subjects):
        if C.subject_member(k) not in m:
            continue
        rng, subject = random.Random(f"{cfg.seed}/refs/{epoch}/{raw.key}/{k}"), None
        found = others.candidates(raw.key, k) if others is not None and cfg.subject_references == "other_clip" else []
        if found:
            root, other = rng.choice(found)
            try:
                subject, source = decode_subject(others.read(root, other), height, width), "other_clip"
            except CROP_ERRORS as e:
                counts["references_unreadable"] += 1
                others.warn(root, other, e)
        refs = [n for n in (C.reference_member(k, r) for r in range(C.MAX_REFERENCES)) if n in m]
        if subject is None and refs and cfg.subject_references != "same_clip":
            subject, source = decode_subject(m[rng.choice(refs)], height, width), "other_frames"
        if subject is None:
            subject, source = decode_subject(m[C.subject_member(k)], height, width), "same_clip"
        counts[f"references_{source}"] += 1
        framed.append(subject)
    subjects = torch.stack(framed) if framed else torch.zeros(0, 3, height, width, dtype=torch.uint8)
    return subjects, counts


def decode_sample(raw: RawSample, cfg: DataConfig, media: bool = True, epoch: int = 0,
                  others: OtherClips | None = None) -> Sample:
    """The sample's tensors, its subjects' crops chosen for ``epoch`` (``decode_subjects``); with ``media=False``
    only its caption and metadata (bucket 0, no video, nothing that needs a decode, no frame count to meet)."""
    m = raw.members
    meta = parse_json(m[C.JSON]) if C.JSON in m else {}
    caption = m[C.CAPTION].decode("utf-8") if C.CAPTION in m else ""
    if not media:
        return Sample(raw.key, 0, None, None, caption, meta)
    if C.MP4 not in m:
        raise SampleError("no mp4 member")
    check_length(meta, cfg)
    bucket, video = decode_clip(m[C.MP4], cfg)
    _, height, width = cfg.bucket_shape(bucket)
    subjects, references = decode_subjects(raw, cfg, epoch, others, height, width)
    return Sample(raw.key, bucket, video, subjects, caption, meta, references)


def _batch_tensor(*shape: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An uninitialised tensor; in a loader worker, in shared memory, so that it reaches the training process
    without the copy into shared memory it would otherwise take (as torch's default_collate does)."""
    empty = torch.empty(0, dtype=dtype)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = empty._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return empty.new(storage).resize_(shape)


def collate(samples: list[Sample], max_subjects: int) -> dict:
    """One batch of samples from the same bucket, as uint8: video pixels and framed subjects zero-padded to
    max_subjects with a presence mask. Pixels stay uint8 until the training device (``training.batch``): a clip is
    51 MB as uint8 at 49x480x720 and 203 MB as float, and handing batches between processes costs per byte.
    Caption-only samples give key, caption and meta."""
    text = {"key": [s.key for s in samples], "caption": [s.caption for s in samples], "meta": [s.meta for s in samples]}
    if samples[0].video is None:
        return text
    video = _batch_tensor(len(samples), *samples[0].video.shape)
    for i, s in enumerate(samples):
        video[i].copy_(s.video)
    counts = torch.tensor([len(s.subjects) for s in samples], dtype=torch.long)
    subjects = _batch_tensor(len(samples), max_subjects, *samples[0].subjects.shape[1:]).zero_()
    for i, s in enumerate(samples):
        subjects[i, :len(s.subjects)] = s.subjects
    return {
        **text,
        "video": video,
        "subjects": subjects,
        "num_subjects": counts,
        "subject_mask": torch.arange(max_subjects)[None] < counts[:, None],
    }

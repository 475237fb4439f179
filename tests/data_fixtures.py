"""Small real datasets for the loader tests: tiny H.264 clips and RGBA subject crops, written by curation's own
DatasetWriter so the loader reads exactly what the pipeline writes; and the loader settings the tests use."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from common import contract as C
from common.storage import Storage
from common.typed_config import ConfigError, apply_overrides, from_dict
from curation.pipeline.row import Row
from curation.config import ShardsConfig
from curation.sink.shards import ShardSink
from curation.sink.writer import DatasetWriter
from training.config import DataConfig


def frame_level(i: int) -> int:
    """The grey level of frame i of a test clip, so tests can tell which frames were sampled (wraps after 9)."""
    return (30 + 25 * i) % 250


def encode_clip(frames: list[np.ndarray], fps: float) -> bytes:
    """H.264 (yuv420p) mp4 bytes of RGB frames, as the curation encoder writes them."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def tiny_clip(width: int, height: int, num_frames: int, fps: float = 8.0) -> bytes:
    """Frame i is grey at frame_level(i), with a white left third, so a centre crop can be told from a squeeze."""
    frames = []
    for i in range(num_frames):
        rgb = np.full((height, width, 3), frame_level(i), np.uint8)
        rgb[:, : width // 3] = 255
        frames.append(rgb)
    return encode_clip(frames, fps)


def subject_png(width: int, height: int, colour: tuple[int, int, int] = (220, 20, 20)) -> bytes:
    """An opaque disc (red by default) on a transparent background."""
    yy, xx = np.mgrid[:height, :width]
    inside = (yy - height / 2) ** 2 / (height / 2) ** 2 + (xx - width / 2) ** 2 / (width / 2) ** 2 <= 1
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[inside] = (*colour, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Clip:
    clip_id: str
    width: int
    height: int
    num_frames: int = 5
    num_subjects: int = 0
    caption: str = ""
    mp4: bytes | None = None  # None: a tiny clip of the sizes above
    fps: float = 8.0
    extra: dict = field(default_factory=dict)  # more metadata
    # Reference crops from other frames per subject (subject_tracks), index-aligned with the subjects; () none.
    references: tuple[int, ...] = ()
    colour: tuple[int, int, int] = (220, 20, 20)  # of its subject crops' discs


def clip_row(c: Clip) -> Row:
    uri = f"/videos/{c.clip_id}.mp4"
    meta = {
        "clip_id": c.clip_id, "source_uri": uri, "source_sha1": hashlib.sha1(uri.encode()).hexdigest(),
        "start_frame": 0, "end_frame": c.num_frames, "start_s": 0.0, "end_s": c.num_frames / c.fps, "fps": c.fps,
        "width": c.width, "height": c.height, "num_frames": c.num_frames, "motion": 1.0, "caption": c.caption,
        "subjects": [{"label": f"thing {k}", "score": 0.5, "bbox": [0.0, 0.0, 4.0, 4.0], "frame": 0,
                      "mask_rle": "{}", "area": 16} for k in range(c.num_subjects)],
        **c.extra,
    }
    mp4 = c.mp4 if c.mp4 is not None else tiny_clip(c.width, c.height, c.num_frames, c.fps)
    pngs = [subject_png(8 + 4 * k, 12, c.colour) for k in range(c.num_subjects)]
    if c.references:  # subject k's reference r is (8 + 4k) x (16 + 4r): each crop of a clip its own shape
        meta["subject_tracks"] = [{"track": [], "embedding": None, "references": [
            {"frame": 1 + r, "member": C.reference_member(k, r), "quality": 0.5, "in_window": False}
            for r in range(n)]} for k, n in enumerate(c.references)]
        pngs += [subject_png(8 + 4 * k, 16 + 4 * r, c.colour) for k, n in enumerate(c.references) for r in range(n)]
    return Row("clip", uri, meta, mp4=mp4, pngs=pngs)


def write_dataset(out: Path, clips: list[Clip], clips_per_shard: int) -> None:
    """Shards, manifest and done markers under ``out``, through curation's shard sink and writer; every shard full
    (``clips_per_shard`` clips) but the last."""
    cfg = ShardsConfig(max_clips=clips_per_shard, tail_fraction=0)
    writer = DatasetWriter(str(out), Storage(), cfg)
    writer.recover()
    rows = []
    for c in clips:
        row = clip_row(c)
        rows += [row, Row("summary", row.source_uri, {"num_clips": 1, "duration_s": 1.0})]
    for row in ShardSink(str(out), Storage(), cfg)(rows):
        writer.add(row)
    writer.close()


def standard_clips() -> list[Clip]:
    """Twelve clips in three aspect ratios, 0 to 3 subjects each, and one clip too short to use."""
    sizes = [(48, 32), (32, 48), (32, 32), (96, 64)]
    clips = [Clip(f"clip-{i:02d}", *sizes[i % 4], num_subjects=i % 4, caption=f"caption of clip {i}")
             for i in range(11)]
    clips.append(Clip("short", 48, 32, num_frames=2, caption="too short"))
    return clips


# Loader settings as overrides of the defaults (which are the full, paper-scale settings).
DATA_PRESETS: dict[str, dict] = {
    "full": {},
    "tiny": dict(frames=[9], target_fps=None, buckets=[(32, 48), (48, 32), (32, 32)], num_workers=0, shuffle_buffer=4),
}


def data_preset(name: str, overrides: list[str] = (), **values) -> DataConfig:
    """A preset with ``values`` (e.g. ``urls=[...]``) and ``key=value`` overrides applied, validated."""
    if name not in DATA_PRESETS:
        raise ConfigError(f"unknown data preset {name!r} (one of {', '.join(DATA_PRESETS)})")
    data = {**DATA_PRESETS[name], **values}
    return from_dict(DataConfig, apply_overrides(data, list(overrides)))

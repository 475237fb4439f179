"""Loader speed against a plain decode of the same clips, in this same script.

Clips are cut from the real test videos with PyAV and written through curation's DatasetWriter (with a caption
and two subject crops each), so the loader reads real shards. The baseline decodes the same mp4 bytes with PyAV
to the same frames at the same output size, one clip after another, in this process: what the loader's work
costs at the least. The loader's CPU seconds per sample (its workers and the training process together) over the
baseline's is its overhead (goal: at most 10%); 1 / that is what one worker delivers per core. CPU time, not wall
time, because the machine is shared. Writes out/bench/loader.json.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import psutil  # installed with ray
import torch
from PIL import Image

from common.storage import Storage
from common.typed_config import from_dict

from benchmarks.results import write_result
from curation.config import ShardsConfig
from curation.pipeline.row import Row
from curation.sink.shards import ShardSink
from curation.sink.writer import DatasetWriter
from training.config import DataConfig
from training.data import ShardLoader
from training.data.decode import nearest_bucket  # the bucket only; the baseline decodes on its own

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
CLIP_S = 7.0  # enough for 49 frames at 8 fps
CUTS = {"testvideo.mp4": [0.0, 6.0, 12.0, 18.0], "fades.mp4": [0.0, 4.0]}  # clip start times (s)
REPEATS = 5  # best of, against noise from other work on the machine
PASSES = 2  # samples per measurement: every clip this many times

warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


def cut(path: Path, starts: list[float]) -> list[tuple[bytes, np.ndarray, float]]:
    """(H.264 mp4, middle frame as RGB, fps) of the CLIP_S-second clip from each start, in one decode."""
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        rate = Fraction(stream.average_rate)
        clips = []
        for start in starts:
            buf = io.BytesIO()
            out = av.open(buf, "w", format="mp4")
            enc = out.add_stream("libx264", rate=rate)
            enc.width, enc.height, enc.pix_fmt = stream.width, stream.height, "yuv420p"
            enc.options = {"preset": "veryfast", "crf": "23"}
            clips.append({"start": start, "buf": buf, "out": out, "enc": enc, "n": 0, "middle": None})
        for frame in src.decode(stream):
            for c in clips:
                if c["start"] <= frame.time < c["start"] + CLIP_S:
                    c["out"].mux(c["enc"].encode(frame.reformat(format="yuv420p")))
                    c["n"] += 1
                    if c["n"] == int(CLIP_S * rate / 2):
                        c["middle"] = frame.to_ndarray(format="rgb24")
    for c in clips:
        c["out"].mux(c["enc"].encode())
        c["out"].close()
    return [(c["buf"].getvalue(), c["middle"], float(rate)) for c in clips]


def subject_crop(frame: np.ndarray, k: int) -> bytes:
    """An RGBA crop of the frame with an elliptic alpha mask, like a segmented subject."""
    h, w = frame.shape[:2]
    crop = frame[h // 4: 3 * h // 4, k * w // 2: (k + 1) * w // 2]
    yy, xx = np.mgrid[: crop.shape[0], : crop.shape[1]]
    ch, cw = crop.shape[0] / 2, crop.shape[1] / 2
    alpha = (((yy - ch) / ch) ** 2 + ((xx - cw) / cw) ** 2 <= 1).astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(np.dstack([crop, alpha]), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def write_shards(out: Path) -> list[bytes]:
    """The clips through curation's shard sink and writer, as a job writes them; their MP4s, in order."""
    writer = DatasetWriter(str(out), Storage(), ShardsConfig(max_clips=3))
    writer.recover()
    rows, clips = [], []
    for name, starts in CUTS.items():
        for start, (mp4, middle, fps) in zip(starts, cut(VIDEOS / name, starts)):
            clip_id = f"{name.split('.')[0]}-{int(start * 1000):06d}"
            height, width = middle.shape[:2]
            meta = {"clip_id": clip_id, "source_uri": str(VIDEOS / name), "start_s": start, "end_s": start + CLIP_S,
                    "fps": fps, "width": width, "height": height, "num_frames": round(CLIP_S * fps), "motion": 1.0,
                    "caption": f"a clip of {name}", "subjects": [{"label": "thing", "score": 0.5, "bbox": [0.0] * 4,
                                                               "frame": 0, "mask_rle": "{}", "area": 1}] * 2}
            rows.append(Row("clip", meta["source_uri"], meta, mp4=mp4, pngs=[subject_crop(middle, k) for k in range(2)]))
            clips.append(mp4)
        rows.append(Row("summary", str(VIDEOS / name), {"num_clips": len(starts), "duration_s": 0.0}))
    for row in ShardSink(str(out), Storage(), ShardsConfig(max_clips=3))(rows):
        writer.add(row)
    writer.close()
    return clips


def plain_decode(mp4: bytes, num_frames: int, target_fps: float, height: int, width: int) -> torch.Tensor:
    """The least a loader must do: decode the needed frames, resize to cover, centre-crop, as one tensor."""
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        step = max(1, round(float(stream.average_rate) / target_fps))
        scale = max(height / stream.height, width / stream.width)
        sw, sh = max(width, round(stream.width * scale)), max(height, round(stream.height * scale))
        top, left = (sh - height) // 2, (sw - width) // 2
        frames = []
        for i, frame in enumerate(container.decode(stream)):
            if i % step == 0:
                rgb = frame.to_ndarray(format="rgb24", width=sw, height=sh, interpolation="AREA")
                frames.append(rgb[top:top + height, left:left + width])
                if len(frames) == num_frames:
                    break
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def cpu_seconds(workers: list[psutil.Process]) -> float:
    """CPU time of this process and the loader's workers: unlike wall time, not inflated by other work on a
    shared machine."""
    return time.process_time() + sum(p.cpu_times().user + p.cpu_times().system for p in workers)


def time_baseline(clips: list[bytes], cfg) -> tuple[float, float]:
    """(samples/s, CPU s per sample) of plain_decode over every clip PASSES times."""
    sizes = []
    for mp4 in clips:
        with av.open(io.BytesIO(mp4)) as c:
            s = c.streams.video[0]
            sizes.append(cfg.buckets[nearest_bucket(s.width, s.height, cfg.buckets)])
    wall, cpu = time.perf_counter(), cpu_seconds([])
    for _ in range(PASSES):
        for mp4, (height, width) in zip(clips, sizes):
            plain_decode(mp4, cfg.frames[-1], cfg.target_fps, height, width)  # 7 s clips: the longest window
    n = PASSES * len(clips)
    return n / (time.perf_counter() - wall), (cpu_seconds([]) - cpu) / n


def time_loader(cfg, samples: int) -> tuple[float, float]:
    """(samples/s, CPU s per sample, workers and training process together) after the first batch, so worker
    start-up is not counted."""
    batches = iter(ShardLoader(cfg))
    next(batches)
    workers = psutil.Process().children()
    wall, cpu = time.perf_counter(), cpu_seconds(workers)
    for _ in range(samples):
        next(batches)
    return samples / (time.perf_counter() - wall), (cpu_seconds(workers) - cpu) / samples


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        clips = write_shards(Path(tmp) / "ds")
        print(f"wrote {len(clips)} real clips in {time.perf_counter() - t:.1f} s")
        base = dict(urls=[str(Path(tmp) / "ds")], batch_size=1, shuffle_buffer=4)
        cfg = from_dict(DataConfig, base)
        samples = PASSES * len(clips)
        runs = {"plain": [], 0: [], 1: [], 2: []}
        for _ in range(REPEATS):  # interleaved, so a burst of other work hits all of them alike
            runs["plain"].append(time_baseline(clips, cfg))
            for workers in (0, 1, 2):
                runs[workers].append(time_loader(from_dict(DataConfig, {**base, "num_workers": workers}), samples))
        best = {k: {"samples_per_s": max(r[0] for r in v), "cpu_s_per_sample": min(r[1] for r in v)}
                for k, v in runs.items()}
        baseline = best.pop("plain")
        print(f"plain PyAV decode ({cfg.frames[-1]} frames at {cfg.target_fps} fps, buckets {cfg.buckets}): "
              f"{baseline['samples_per_s']:.2f} samples/s, {baseline['cpu_s_per_sample']:.3f} CPU s/sample")
        loader = {}
        for workers, b in best.items():
            cpu = b["cpu_s_per_sample"]
            loader[workers] = {**b, "samples_per_s_per_worker_core": 1 / cpu,
                               "cost_over_plain_decode": cpu / baseline["cpu_s_per_sample"] - 1}
            print(f"loader, {workers} workers: {b['samples_per_s']:.2f} samples/s; {cpu:.3f} CPU s/sample "
                  f"(= {1 / cpu:.2f} samples/s per worker core): cost over plain decode "
                  f"{100 * loader[workers]['cost_over_plain_decode']:+.1f}%")
    res = {"clips": len(clips), "num_frames": cfg.frames[-1], "target_fps": cfg.target_fps, "buckets": cfg.buckets,
           "cpus": os.cpu_count(), "plain_decode": baseline, "loader": loader,
           "note": "cost is measured in CPU seconds per sample (workers and training process), best of "
                   f"{REPEATS}: wall-clock samples/s on a shared machine depends on what else runs"}
    write_result("loader", res)


if __name__ == "__main__":
    main()

"""Trainer throughput: the real trainer (loader -> frozen encoders -> FSDP2 DiT step) on one device.

Writes a dataset of synthetic moving-pattern clips through curation's DatasetWriter, then trains the `mid` preset
with its DiT widened to the full model's width (48 heads x 64) and ``--layers`` blocks at ``--frames`` x
``--height`` x ``--width``, and reports what the trainer's own metrics say: samples/s, tokens/s, MFU (GPU),
data-wait fraction and peak memory. Writes out/bench/train.json.

    python -m benchmarks.train_bench                      # GPU: 49x480x720, 8 full-width blocks
    python -m benchmarks.train_bench --smoke              # CPU: a toy size, to check the script runs
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

import av
import numpy as np

from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parents[1]

# The cinema stage with a random AlignerNet: the paper's ablation (d), named (speed benchmarks need no pretraining).
SCRATCH = "ablation.aligner_from_scratch=true"


def synthetic_clip(frames: int, height: int, width: int, seed: int) -> bytes:
    """A textured pattern drifting across the frame: H.264 that decodes like real footage (not a flat colour)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 8 + 8, width // 8 + 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt, s.options = width, height, "yuv420p", {"preset": "ultrafast", "crf": "23"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[i % 8:i % 8 + height, i % 8:i % 8 + width]),
                                               format="rgb24")
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    return buf.getvalue()


def write_dataset(folder: Path, clips: int, frames: int, height: int, width: int) -> None:
    """Clips of 2 subjects each, 4 to a shard, through curation's shard sink and writer (as a job writes them)."""
    from common.storage import Storage

    from curation.config import ShardsConfig
    from curation.pipeline.row import Row
    from curation.sink.shards import ShardSink
    from curation.sink.writer import DatasetWriter

    cfg = ShardsConfig(max_clips=4, tail_fraction=0)
    writer = DatasetWriter(str(folder), Storage(), cfg)
    writer.recover()
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.full((64, 48, 4), 200, np.uint8), "RGBA").save(png, format="PNG")
    rows = []
    for i in range(clips):
        uri = f"/synthetic/{i}.mp4"
        meta = {"clip_id": f"clip-{i:04d}", "source_uri": uri, "source_sha1": "0" * 40, "start_frame": 0,
                "end_frame": frames, "start_s": 0.0, "end_s": frames / 8, "fps": 8.0, "width": width,
                "height": height, "num_frames": frames, "motion": 1.0, "caption": f"a drifting pattern {i}",
                "subjects": [{"label": "thing", "score": 0.5, "bbox": [0.0, 0.0, 48.0, 64.0], "frame": 0,
                              "mask_rle": "{}", "area": 3072}] * 2}
        rows += [Row("clip", uri, meta, mp4=synthetic_clip(frames, height, width, i), pngs=[png.getvalue()] * 2),
                 Row("summary", uri, {"num_clips": 1, "duration_s": frames / 8})]
    for row in ShardSink(str(folder), Storage(), cfg)(rows):
        writer.add(row)
    writer.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=720)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--no-ac", action="store_true", help="without activation checkpointing")
    p.add_argument("--smoke", action="store_true", help="CPU toy size")
    args = p.parse_args()
    if args.smoke:
        args.layers, args.frames, args.height, args.width, args.steps, args.clips, args.workers = 1, 9, 32, 48, 4, 4, 0
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from tiny_models.cinema_checkpoints import save_tiny_checkpoints
    from training.config import load_train_job
    from training.trainer import train

    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    checkpoints = save_tiny_checkpoints(work / "tiny")
    write_dataset(work / "data", args.clips, args.frames, args.height, args.width)
    heads = ["dit.heads=2", "dit.head_dim=64"] if args.smoke else ["dit.heads=48", "dit.head_dim=64"]
    job = load_train_job(None, [
        "model.preset=mid", f"model.checkpoints={checkpoints}",
        f"model.overrides=[{', '.join([*heads, f'dit.layers={args.layers}', f'video.num_frames={args.frames}', f'video.height={args.height}', f'video.width={args.width}', SCRATCH])}]",
        f"data.urls=[{work / 'data'}]", f"data.frames=[{args.frames}]", "data.target_fps=null",
        f"data.buckets=[[{args.height}, {args.width}]]", f"data.num_workers={args.workers}",
        "data.batch_size=1", "data.shuffle_buffer=4", f"steps={args.steps}", f"metrics.every={max(1, args.steps // 6)}",
        "metrics.tensorboard=false", f"checkpoint.every={args.steps}", f"out_dir={work / 'run'}",
        f"parallel.activation_checkpointing={str(not args.no_ac).lower()}",
    ])
    last = train(job)
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows  # the first window holds start-up (allocator, first batches)
    result = {
        "config": vars(args),
        "samples_per_s": float(np.mean([r["samples_per_s"] for r in steady])),
        "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in steady])),
        "data_wait": float(np.mean([r["data_wait"] for r in steady])),
        "mfu": float(np.mean([r["mfu"] for r in steady])) if "mfu" in last else None,
        "peak_mem_gib": last.get("peak_mem_gib"),
        "windows": rows,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "windows"}, indent=2))
    write_result("train", result)


if __name__ == "__main__":
    main()

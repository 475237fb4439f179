"""Where shards are written: on the workers (this tree) vs in the driver (a baseline revision), same script, same run.

(a) the sink alone: a stage makes clips of CLIP_MB random bytes from nothing, so the sink is all there is to time;
(b) the real CPU job (scenes, encode) over the sample videos (real footage, ../shared/data/videos).
For each: clips/s, MB/s of shards written, and bytes that reach the driver per clip (the Arrow batches it reads
from Ray Data). The baseline is checked out with `git worktree` at BASELINE (the last revision whose driver wrote
every shard); each run is a fresh process with its own local Ray on 127.0.0.1.

    python -m benchmarks.sink_bench [--baseline REV] [--clips N]

Writes out/bench/sink.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "cfd3c65"  # the driver wrote every shard up to here
CLIP_MB = 2.0
CPUS = 2


def _made_clips_stage(num_clips: int):
    """A stage that turns each source row into ``num_clips`` clips of CLIP_MB random bytes (defined in the child,
    against whichever checkout it imports)."""
    try:  # this checkout's layout
        from curation.pipeline.row import Row as make_row
        from curation.pipeline.stage import Stage
    except ImportError:  # the baseline's: rows were dicts
        from curation.stages.base import Stage, make_row

    class MadeClips(Stage):
        name = "made_clips"
        consumes = ("source",)

        def __init__(self, cfg):
            self.cfg = cfg

        def process(self, row):
            uri = row["source_uri"] if isinstance(row, dict) else row.source_uri
            sha1 = hashlib.sha1(uri.encode()).hexdigest()
            for i in range(num_clips):
                meta = {"clip_id": f"{sha1[:16]}_{i:07d}_{i + 1:07d}", "source_uri": uri,
                        "source_sha1": sha1, "start_frame": i, "end_frame": i + 1, "start_s": float(i),
                        "end_s": i + 1.0, "fps": 24.0, "width": 1280, "height": 720, "num_frames": 48,
                        "motion": 5.0, "blank_frac": 0.0, "luma": 100.0, "contrast": 40.0, "damaged_frames": 0}
                yield make_row("clip", uri, meta, os.urandom(int(CLIP_MB * 2**20)))
            yield make_row("summary", uri, {"source_sha1": sha1, "num_clips": num_clips, "duration_s": float(num_clips)})

    return MadeClips


def child(kind: str, out: str, inputs: str, num_clips: int) -> dict:
    """One job in this process (run with the checkout under test first on sys.path)."""
    try:
        from curation.pipeline import runner
    except ImportError:  # the baseline's flat layout
        from curation import runner
    from curation.config import load_job

    received = {"bytes": 0}
    from_table = runner.from_table

    def counting(table):  # only the driver's calls are counted: workers import the module afresh
        received["bytes"] += table.nbytes
        return from_table(table)

    runner.from_table = counting
    sets = [f"ray.num_cpus={CPUS}", "caption.enabled=false", "aesthetic.enabled=false", "subjects.enabled=false",
            "shards.target_size_mb=64"]
    if kind == "cpu_job":  # the demo's loose cuts: every scene of the sample videos that has content is a clip
        sets += ["scenes.min_clip_s=0.5", "filters.min_motion=0", "filters.min_height=0", "shards.target_size_mb=1"]
    cfg = load_job(None, sets, input=inputs, output=out)
    stages = [_made_clips_stage(num_clips)] if kind == "sink" else None
    t0 = time.perf_counter()
    result = runner.run(cfg, stages)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    clips = result.stats.clips_written
    return {"clips": clips, "seconds": round(seconds, 2), "clips_per_s": round(clips / seconds, 2),
            "shard_MB_per_s": round(result.stats.bytes_written / 1e6 / seconds, 1),
            "shards": result.stats.shards_written,
            "driver_bytes_per_clip": round(received["bytes"] / max(1, clips))}


def run_in(checkout: Path, kind: str, inputs: str, num_clips: int) -> dict:
    out = tempfile.mkdtemp(prefix=f"sink-{kind}-")
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # Ray's workers import the same checkout
    code = (f"import json, sys; sys.path.insert(0, {str(checkout)!r}); from benchmarks.sink_bench import child; "
            f"print('RESULT', json.dumps(child({kind!r}, {out!r}, {inputs!r}, {num_clips})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{kind} in {checkout} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--clips", type=int, default=60, help="clips per made-up source (sink alone; 8 sources)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sink-bench-"))
    base = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        (base / "benchmarks" / "sink_bench.py").write_text(Path(__file__).read_text())  # the same harness in both
        sources = work / "sources.txt"
        sources.write_text("".join(f"made://source-{i}\n" for i in range(8)))
        videos = work / "videos.txt"
        videos.write_text("".join(f"{p}\n" for p in sorted((ROOT.parent / "shared" / "data" / "videos").glob("*.mp4"))))
        results = {}
        for kind, inputs in (("sink", str(sources)), ("cpu_job", str(videos))):
            results[kind] = {"workers": run_in(ROOT, kind, inputs, args.clips),
                             "driver": run_in(base, kind, inputs, args.clips)}
            w, d = results[kind]["workers"], results[kind]["driver"]
            results[kind]["ratio_clips_per_s"] = round(w["clips_per_s"] / d["clips_per_s"], 2)
            results[kind]["ratio_driver_bytes"] = round(w["driver_bytes_per_clip"] / max(1, d["driver_bytes_per_clip"]), 5)
            print(f"{kind}: workers {w}\n{' ' * len(kind)}  driver  {d}", flush=True)
        results["baseline"] = args.baseline
        write_result("sink", results)
        print(json.dumps(results, indent=1))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()

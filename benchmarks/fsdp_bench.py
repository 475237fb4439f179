"""FSDP2 on 2 ranks vs one process: the trainer's step time on the same global batch, same script, same data.

Both runs train the `mid` preset (8 DiT blocks, width 512) on synthetic clips; the single process takes the whole
global batch, each of the 2 ranks half of it. On 2 CPU cores the 2 ranks share the cores the single process had,
so the ratio shows FSDP2's communication and sharding overhead (ideal: about 1.0). Writes out/bench/fsdp.json.

    python -m benchmarks.fsdp_bench
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from jobs.loopback_s3 import free_port

from benchmarks.results import write_result
from benchmarks.train_bench import write_dataset

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, STEPS, FRAMES, HEIGHT, WIDTH = 4, 12, 17, 64, 96

# The cinema stage with a random AlignerNet: the paper's ablation (d), named (speed benchmarks need no pretraining).
SCRATCH = "ablation.aligner_from_scratch=true"


def run(ranks: int, work: Path, checkpoints: Path) -> float:
    """Median step time (s) of the steady-state steps."""
    out = work / f"run{ranks}"
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}"]
    sets = ["model.preset=mid", f"model.checkpoints={checkpoints}",
            f"model.overrides=[video.num_frames={FRAMES}, video.height={HEIGHT}, video.width={WIDTH}, {SCRATCH}]",
            f"data.urls=[{work / 'data'}]", f"data.frames=[{FRAMES}]", "data.target_fps=null",
            f"data.buckets=[[{HEIGHT}, {WIDTH}]]", "data.num_workers=0",
            f"data.batch_size={GLOBAL_BATCH // ranks}", f"steps={STEPS}", "metrics.every=1",
            "metrics.tensorboard=false", f"checkpoint.every={STEPS}", f"out_dir={out}",
            "parallel.param_dtype=float32", "parallel.activation_checkpointing=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(2 // ranks)}
    subprocess.run([*launcher, "-m", "training", *[a for s in sets for a in ("--set", s)]], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Step 1 holds start-up; the last step holds the final checkpoint.
    return statistics.median(r["step_s"] - r["data_wait"] * r["step_s"] for r in rows[2:-1])


def main() -> None:
    from tiny_models.cinema_checkpoints import save_tiny_checkpoints

    work = Path(tempfile.mkdtemp(prefix="fsdp-bench-"))
    checkpoints = save_tiny_checkpoints(work / "tiny")
    write_dataset(work / "data", 16, FRAMES, HEIGHT, WIDTH)
    single = run(1, work, checkpoints)
    fsdp = run(2, work, checkpoints)
    result = {"global_batch": GLOBAL_BATCH, "video": [FRAMES, HEIGHT, WIDTH], "preset": "mid",
              "single_process_step_s": single, "fsdp2_2_ranks_step_s": fsdp, "ratio": fsdp / single}
    print(f"step time without data wait, global batch {GLOBAL_BATCH}: one process {single:.3f} s, "
          f"FSDP2 on 2 ranks {fsdp:.3f} s: {fsdp / single:.2f}x")
    write_result("fsdp", result)


if __name__ == "__main__":
    main()

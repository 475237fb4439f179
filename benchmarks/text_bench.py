"""The burned-in text filter (curation.stages.text) against ground truth from real footage (benchmarks.text_cases):
precision and recall of its ``dropped_by == "text"`` decision at the default ``filters.max_text_area``, the
text_area of each kind of case, a threshold sweep, the detector's input size against its cost, frames/s on one core
beside the scene pass's, and what the filter does to the labelled real videos of benchmarks/clean_clips.py (which
clips it drops, and their clean rate and coverage with and without it).

The stage itself runs on every case (its ``process`` on a clip row carrying the case's MP4), with one onnxruntime
thread, one OpenCV thread and one torch thread: one core, as a Ray worker with num_cpus=1 runs it. Writes
out/bench/text.json and, under out/bench/text/, a PNG of the most text-covered frame of every wrong decision, with
the boxes drawn.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.results import BENCH_DIR, write_result

ROOT = Path(__file__).resolve().parents[1]
SWEEP = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1)
SIZES = (480, 640, 960)


def _cpu() -> float:
    return time.process_time()


def pr(labels: list[bool], predicted: list[bool]) -> dict:
    tp = sum(t and p for t, p in zip(labels, predicted))
    fp = sum(p and not t for t, p in zip(labels, predicted))
    fn = sum(t and not p for t, p in zip(labels, predicted))
    return {"precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn), "tp": tp, "fp": fp, "fn": fn,
            "tn": len(labels) - tp - fp - fn}


def run_cases(cases, cfg) -> tuple[list[dict], dict]:
    """The text stage on every case: per case its scores and decision; the stage's and the detector's time."""
    from curation.pipeline.row import Row
    from curation.stages.text import TextStage

    stage = TextStage(cfg)
    stage.setup()
    detect, spent = stage.detect, {"detector_cpu_s": 0.0, "detector_wall_s": 0.0, "frames": 0}

    def timed(frames):
        c, w = _cpu(), time.perf_counter()
        out = detect(frames)
        spent["detector_cpu_s"] += _cpu() - c
        spent["detector_wall_s"] += time.perf_counter() - w
        spent["frames"] += len(frames)
        return out

    stage.detect = timed
    stage.process(Row("clip", "warm-up", {"fps": cases[0].fps, "num_frames": cases[0].num_frames}, mp4=cases[0].mp4))
    spent.update(detector_cpu_s=0.0, detector_wall_s=0.0, frames=0)
    results, stage_cpu, stage_wall, clip_frames = [], 0.0, 0.0, 0
    for case in cases:
        row = Row("clip", f"bench://{case.video}", {"clip_id": case.name, "fps": case.fps, "num_frames": case.num_frames},
                  mp4=case.mp4)
        c, w = _cpu(), time.perf_counter()
        (out,) = stage.process(row)
        stage_cpu, stage_wall = stage_cpu + _cpu() - c, stage_wall + time.perf_counter() - w
        clip_frames += case.num_frames
        results.append({"case": case.name, "video": case.video, "kind": case.kind, "text": case.text, "note": case.note,
                        "text_area": out.meta["text_area"], "text_frames": out.meta["text_frames"],
                        "dropped": out.kind == "dropped" and out.meta["dropped_by"] == "text",
                        "size": f"{case.width}x{case.height}"})
    n = spent["frames"]
    speed = {
        "detector_frames_per_cpu_s": n / spent["detector_cpu_s"], "detector_frames_per_s": n / spent["detector_wall_s"],
        "stage_clips_per_cpu_s": len(cases) / stage_cpu,
        # What a clip's whole stage cost (decode of its MP4 up to the last frame looked at, and detection) buys in
        # source frames: comparable with the scene pass's analysis frames/s.
        "stage_clip_frames_per_cpu_s": clip_frames / stage_cpu, "stage_clip_frames_per_s": clip_frames / stage_wall,
        "frames_per_clip": cfg.text.num_frames, "size": cfg.text.size,
    }
    return results, speed


def size_sweep(cases, cfg, threshold: float | None) -> dict:
    """Precision, recall and detector frames/s per input size, on the frames the stage looks at."""
    from common.contract import window_frames

    from curation.models.text_detection import TextDetector, model_path
    from curation.video.frames import decode_frames, sample_indices

    picks = []
    for case in cases:
        idx = sample_indices(window_frames(case.fps, case.num_frames), cfg.text.num_frames)
        frames = decode_frames(case.mp4, set(idx))
        picks.append([frames[i] for i in idx])
    out = {}
    for size in SIZES:
        t = cfg.text
        det = TextDetector(model_path(t.model), size, t.threshold, t.box_threshold, t.unclip_ratio, threads=1)
        det(picks[0])
        c, areas = _cpu(), []
        for frames in picks:
            areas.append(max(f.area for f in det(frames)))
        cpu = _cpu() - c
        dropped = [threshold is not None and a > threshold for a in areas]
        r = pr([case.text for case in cases], dropped)
        r.update(frames_per_cpu_s=sum(map(len, picks)) / cpu, text_area=[round(a, 5) for a in areas],
                 recall_by_kind={kind: _share([d for d, case in zip(dropped, cases) if case.kind == kind and case.text])
                                 for kind in sorted({c.kind for c in cases})})
        out[str(size)] = r
        print(f"  size {size}: precision {r['precision']:.3f}, recall {r['recall']:.3f} (fp {r['fp']}, fn {r['fn']}), "
              f"{r['frames_per_cpu_s']:.1f} frames/s on one core")
    return out


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def wrong_previews(cases, results, cfg, folder: Path) -> None:
    """The most text-covered frame the stage looked at, with its boxes, for every wrong decision."""
    import cv2
    import numpy as np

    from common.contract import window_frames

    from curation.models.text_detection import TextDetector
    from curation.video.frames import decode_frames, sample_indices

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    det = TextDetector.load(cfg.text)
    for case, r in zip(cases, results):
        if r["dropped"] == r["text"]:
            continue
        idx = sample_indices(window_frames(case.fps, case.num_frames), cfg.text.num_frames)
        frames = decode_frames(case.mp4, set(idx))
        found = det([frames[i] for i in idx])
        k = max(range(len(idx)), key=lambda j: found[j].area)
        bgr = cv2.cvtColor(frames[idx[k]], cv2.COLOR_RGB2BGR)
        for box in found[k].boxes:
            cv2.polylines(bgr, [box.astype(np.int32)], True, (0, 0, 255), max(1, bgr.shape[0] // 200))
        what = "fp" if r["dropped"] else "fn"
        cv2.imwrite(str(folder / f"{what}-{case.name.replace(':', '-')}-f{idx[k]}.png"), bgr)


def labelled_videos(cfg_overrides: list[str]) -> dict:
    """The default detectors on the labelled real videos as benchmarks/clean_clips.py runs them (the demo job,
    clips of 1 to 10 s), with encode and the text stage after them: the clips the filter drops, and clean rate and
    coverage with the filter and without it (its dropped clips kept)."""
    from benchmarks.clean_clips import LIMITS, labelled_videos as videos
    from curation.config import load_job
    from curation.pipeline.row import Row
    from curation.run.executor import Chain
    from curation.stages import CPU_STAGES
    from curation.tools.clean_clips import evaluate

    paths, labels = videos()
    with_text, without, dropped, areas = {}, {}, {}, {}
    for name, path in paths.items():
        cfg = load_job(ROOT / "jobs" / "demo_curation.yaml", ["caption.enabled=false", "aesthetic.enabled=false",
                       *LIMITS, *cfg_overrides], input=str(path), output="unused")
        with Chain(cfg, list(CPU_STAGES)) as chain:
            rows = list(chain([Row("source", str(path), {})]))
        errors = [r.meta["message"] for r in rows if r.kind == "error"]
        if errors:
            raise RuntimeError(f"{name}: {errors[0]}")
        kept = [(r.meta["start_frame"], r.meta["end_frame"]) for r in rows if r.kind == "clip"]
        texty = [r.meta for r in rows if r.kind == "dropped" and r.meta["dropped_by"] == "text"]
        with_text[name] = sorted(kept)
        without[name] = sorted(kept + [(m["start_frame"], m["end_frame"]) for m in texty])
        dropped[name] = [{"frames": [m["start_frame"], m["end_frame"]], "text_area": m["text_area"],
                          "text_frames": m["text_frames"]} for m in texty]
        areas[name] = sorted(r.meta["text_area"] for r in rows if r.kind == "clip")
    from benchmarks.text_cases import REAL_TEXT

    # The filter's effect on footage without text of its own: the clips of REAL_TEXT videos it dropped counted back.
    text_free = {name: without[name] if name in REAL_TEXT else clips for name, clips in with_text.items()}
    out = {"with_text_filter": evaluate(with_text, labels), "without_text_filter": evaluate(without, labels),
           "with_text_filter_real_text_kept": evaluate(text_free, labels), "dropped_by_text": dropped,
           "kept_text_area": areas}
    for k in ("with_text_filter", "without_text_filter", "with_text_filter_real_text_kept"):
        out[k].pop("per_video")
    return out


def _small(r: dict) -> bool:
    """Footage under 240 lines (160x90, 176x144): text burned at its size is a few pixels high."""
    return min(int(x) for x in r["size"].split("x")) < 240


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="job overrides (e.g. text.size=480)")
    p.add_argument("--no-labelled", action="store_true", help="skip the labelled videos' pipeline run")
    p.add_argument("--out", default="text", help="result name under out/bench/ (default: text)")
    args = p.parse_args()

    import cv2
    import torch

    from benchmarks.text_cases import KINDS, REAL_TEXT, build_cases
    from curation.config import load_job

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = load_job(None, args.set, input="x", output="unused")
    threshold = cfg.filters.max_text_area
    t0 = time.perf_counter()
    cases = build_cases()
    print(f"{len(cases)} cases from real footage ({sum(c.text for c in cases)} with text) built in "
          f"{time.perf_counter() - t0:.0f} s")
    results, speed = run_cases(cases, cfg)
    labels, predicted = [r["text"] for r in results], [r["dropped"] for r in results]
    overall = pr(labels, predicted)
    big = [r for r in results if not _small(r)]
    at_size = pr([r["text"] for r in big], [r["dropped"] for r in big])
    print(f"filters.max_text_area = {threshold}: precision {overall['precision']:.3f}, recall {overall['recall']:.3f} "
          f"(tp {overall['tp']}, fp {overall['fp']}, fn {overall['fn']}, tn {overall['tn']}); footage of 240 lines "
          f"or more: precision {at_size['precision']:.3f}, recall {at_size['recall']:.3f}")

    by_kind = {}
    for kind in [*KINDS, "real text"]:
        rs = [r for r in results if (r["kind"] == kind and not (kind == "none" and r["text"]))
              or (kind == "real text" and r["kind"] == "none" and r["text"])]
        a = [r["text_area"] for r in rs]
        by_kind[kind] = {"cases": len(rs), "dropped": sum(r["dropped"] for r in rs),
                         "dropped_240_lines_up": [sum(r["dropped"] for r in rs if not _small(r)),
                                                  sum(1 for r in rs if not _small(r))],
                         "text_area_min": min(a), "text_area_median": statistics.median(a), "text_area_max": max(a),
                         "text_area": sorted(round(x, 5) for x in a)}
        d, n = by_kind[kind]["dropped_240_lines_up"]
        print(f"  {kind:14s} {by_kind[kind]['dropped']:3d}/{len(rs):3d} dropped ({d}/{n} at 240 lines or more); "
              f"text_area min {min(a):.4f}, median {statistics.median(a):.4f}, max {max(a):.4f}")
    wrong = [{k: r[k] for k in ("case", "text_area", "text_frames", "note", "size")} | {"error": "fp" if r["dropped"] else "fn"}
             for r in results if r["dropped"] != r["text"]]
    for w in wrong:
        if not (w["error"] == "fn" and _small(w)):
            print(f"    {w['error']}: {w['case']} ({w['size']}) text_area {w['text_area']:.4f}"
                  + (f" [{w['note']}]" if w["note"] else ""))
    small_fn = [w for w in wrong if w["error"] == "fn" and _small(w)]
    print(f"    fn on footage under 240 lines: {len(small_fn)}")

    scene = None
    clean = BENCH_DIR / "clean_clips.json"
    if clean.exists():
        import json

        scene = json.loads(clean.read_text()).get("transnetv2 gated + adaptive (default)", {}).get("analysis_frames_per_s")
    print(f"one core: detector {speed['detector_frames_per_cpu_s']:.1f} frames/s at size {cfg.text.size}; the stage "
          f"(decode + {cfg.text.num_frames} frames) {speed['stage_clips_per_cpu_s']:.2f} clips/s = "
          f"{speed['stage_clip_frames_per_cpu_s']:.0f} clip frames/s"
          + (f", beside the scene pass's {scene:.0f} analysis frames/s (out/bench/clean_clips.json)" if scene else ""))
    print("detector input size (the same frames):")
    sizes = size_sweep(cases, cfg, threshold)
    wrong_previews(cases, results, cfg, BENCH_DIR / args.out)

    result = {"threshold": threshold, "text_config": vars(cfg.text), "cases": len(results), "overall": overall,
              "overall_240_lines_up": at_size, "by_kind": by_kind, "wrong": wrong,
              "speed": {**speed, "scene_pass_frames_per_s": scene}, "sizes": sizes, "per_case": results}
    negatives = []  # text_area of the labelled videos' candidate clips (footage without text of its own)
    if not args.no_labelled:
        t0 = time.perf_counter()
        lab = labelled_videos(args.set)
        result["labelled_videos"] = lab
        w, wo = lab["with_text_filter"], lab["without_text_filter"]
        print(f"labelled real videos ({time.perf_counter() - t0:.0f} s): without the text filter clean rate "
              f"{wo['clean_rate']:.3f} ({wo['clean']}/{wo['kept']}), coverage {wo['coverage']:.3f}; with it "
              f"{w['clean_rate']:.3f} ({w['clean']}/{w['kept']}), coverage {w['coverage']:.3f}")
        f = lab["with_text_filter_real_text_kept"]
        print(f"  with it but the clips of videos with text of their own counted back ({', '.join(REAL_TEXT)}): clean "
              f"rate {f['clean_rate']:.3f} ({f['clean']}/{f['kept']}), coverage {f['coverage']:.3f}")
        for name, ds in lab["dropped_by_text"].items():
            if ds:
                print(f"  {name}: {len(ds)} clip(s) dropped as text: "
                      + ", ".join(f"[{d['frames'][0]},{d['frames'][1]}) {d['text_area']:.4f}" for d in ds)
                      + (f" [{REAL_TEXT[name]}]" if name in REAL_TEXT else ""))
        negatives = [a for name, areas in lab["kept_text_area"].items() if name not in REAL_TEXT for a in areas]
        negatives += [d["text_area"] for name, ds in lab["dropped_by_text"].items() if name not in REAL_TEXT for d in ds]

    sweep = {}
    for t in SWEEP:
        s = pr(labels, [r["text_area"] > t for r in results])
        s["recall_240_lines_up"] = pr([r["text"] for r in big], [r["text_area"] > t for r in big])["recall"]
        s["fp_cases"] = [r["case"] for r in results if r["text_area"] > t and not r["text"]]
        s["recall_by_kind_240_lines_up"] = {kind: _share([r["text_area"] > t for r in big if r["kind"] == kind and r["text"]])
                                            for kind in KINDS}
        s["labelled_negatives_dropped"] = [sum(a > t for a in negatives), len(negatives)]
        sweep[str(t)] = s
    result["sweep"] = sweep
    print("threshold sweep: precision / recall (240 lines up) / fp cases / labelled clips without text dropped")
    for t, s in sweep.items():
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in s["recall_by_kind_240_lines_up"].items() if v is not None and k != "none")
        print(f"  {t:>6}: {s['precision']:.2f} / {s['recall']:.2f} ({s['recall_240_lines_up']:.2f}) / {s['fp']} / "
              f"{s['labelled_negatives_dropped'][0]} of {s['labelled_negatives_dropped'][1]}   [{kinds}]")
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()

"""Subject tracking, reference choice and identities across clips: how right they are against ground truth, and what
they cost.

    python -m benchmarks.subject_refs_bench [--clips 60] [--sources 12] [--skip-cost]

(a) References. Random synthetic clips (``benchmarks.subject_synthetic.random_clip``: a dog on a random path and
scale, maybe leaving or entering the frame, blurred for a few frames, crossed by a labelled car or an unlabelled pole;
a ball) go through ``clip_subjects`` with ground-truth detection and masks. Each kept subject's chosen references are
ranked among the frames looked at (the keyframe sighting excluded) by ground-truth quality: clean first (nothing
truncated, occluded or blurred), then larger visible area. Reported: the share of references in that top-k
(k = ``subjects.references``), their mean rank, the share that are clean, references from frames more than 25 %
truncated or 50 % occluded (with the first few listed), subjects left without a reference though a clean frame was
looked at, and, where a clean frame outside the training window was looked at, how often a reference comes from
outside it. Also how the measured signals follow the truth: ``border_cut`` by truncated share and ``occluded`` by
occluded share. With the default ``track_frames`` and with 9.

(b) Identities. Sources of 4 synthetic clips sharing a dog and a ball (other places, sizes, exposure), with a
distractor dog of another look in about half of the clips, through ``clip_subjects`` and
``curation.identities.source_record``: precision and recall of cross-clip subject pairs (same ground-truth object)
at ``identities.similarity`` and over a sweep, the cosine of true and false pairs, and the share of other-clip
references that show the same object. The embedding is ``subject_synthetic.describe``, a non-learned colour and
gradient histogram (the tiny CLIP has random weights): these numbers test the matching logic on a descriptor that
separates these shapes, not a real CLIP.

(c) Cost. ``SubjectStage`` with the tiny random models (``tiny_models``) on the clips the CPU stages cut from
testvideo.mp4: clips/s with ``subjects.track_frames=1 subjects.references=0`` (one keyframe, as before tracking)
and with the defaults; and the bytes a clip adds to its shard: reference PNGs (raw, and in the tar with header and
padding) and the ``subject_tracks`` JSON, for the tiny models' (random, ragged) masks and for the synthetic clips'
true masks.

Writes out/bench/subject_refs.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks import subject_synthetic as S
from benchmarks.results import write_result
from curation.config import IdentitiesConfig, SubjectsConfig
from curation.identities import source_record

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT.parent / "shared" / "data" / "videos" / "testvideo.mp4"
BAD_TRUNCATED, BAD_OCCLUDED = 0.25, 0.5
SWEEP = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
BINS = ((0.0, 0.0), (0.0, 0.25), (0.25, 0.5), (0.5, 1.0))  # (lo, hi]: the first is exactly 0
BEFORE = {"track_frames": 1, "references": 0}  # one keyframe, no references: the stage before tracking


def share(n: int, d: int) -> float | None:
    return round(n / d, 3) if d else None


# -- (a) references ---------------------------------------------------------------------------------------------------
def gt_order(clip: S.Clip, actor: str, frames: list[int]) -> list[int]:
    """``frames`` where the actor is visible, best first by ground truth: clean ones, then larger visible area."""
    truth = clip.truth[actor]
    return sorted((f for f in frames if truth[f].area), key=lambda f: (not truth[f].clean, -truth[f].area, f))


def in_bin(value: float, lo: float, hi: float) -> bool:
    return value == 0 if hi == 0 else lo < value <= hi


def references(clips: list[S.Clip], cfg: SubjectsConfig) -> dict:
    k = cfg.references
    n = defaultdict(int)
    ranks, bad, points = [], [], []
    for clip in clips:
        found = S.find(clip, cfg)
        looked = sorted(clip.looked_at(cfg.track_frames))
        for subject, track in zip(found.subjects, found.tracks):
            actor = clip.actor_at(subject["label"], subject["frame"], subject["bbox"])
            if actor is None:
                n["subjects_unmatched"] += 1
                continue
            truth = clip.truth[actor]
            n["subjects"] += 1
            order = gt_order(clip, actor, [f for f in looked if f != subject["frame"]])
            refs = [r["frame"] for r in track["references"]]
            clean = [f for f in order if truth[f].clean]
            n["references"] += len(refs)
            n["subjects_without_reference_though_clean_frame"] += not refs and bool(clean)
            for r in track["references"]:
                f, t = r["frame"], truth[r["frame"]]
                ranks.append(order.index(f) + 1)
                n["references_in_gt_top_k"] += order.index(f) < k
                n["references_clean"] += t.clean
                if t.truncated > BAD_TRUNCATED or t.occluded > BAD_OCCLUDED:
                    n["references_bad"] += 1
                    n["references_bad_truncated" if t.truncated > BAD_TRUNCATED else "references_bad_occluded"] += 1
                    point = next(p for p in track["track"] if p["frame"] == f)
                    bad.append({"clip": clip.name, "object": actor, "frame": f, "in_window": r["in_window"],
                                "truncated": round(t.truncated, 2), "occluded": round(t.occluded, 2),
                                "border_cut": round(point["border_cut"], 2), "measured_occluded": round(point["occluded"], 2),
                                "quality": round(r["quality"], 2)})
            if any(f >= clip.window_end for f in clean):
                n["subjects_with_clean_frame_outside_window"] += 1
                n["of_which_a_reference_outside_window"] += any(f >= clip.window_end for f in refs)
            n["references_outside_window_not_clean_while_clean_inside_unused"] += sum(
                f >= clip.window_end and not truth[f].clean for f in refs) if any(
                f < clip.window_end and f not in refs for f in clean) else 0
            for p in track["track"]:
                if clip.actor_at(subject["label"], p["frame"], p["bbox"]) == actor:
                    t = truth[p["frame"]]
                    points.append((t.truncated, p["border_cut"], t.occluded, p["occluded"]))
    pts = np.array(points)
    signals = {"border_cut_by_truncated": {}, "occluded_by_occluded": {}}
    for lo, hi in BINS:
        name = f"{lo}-{hi}" if hi else "0"
        sel = np.array([in_bin(v, lo, hi) for v in pts[:, 0]])
        signals["border_cut_by_truncated"][name] = {
            "sightings": int(sel.sum()), "mean_border_cut": round(float(pts[sel, 1].mean()), 3) if sel.any() else None,
            "share_passing_max_border_cut": share(int((pts[sel, 1] <= cfg.max_border_cut).sum()), int(sel.sum()))}
        sel = np.array([in_bin(v, lo, hi) for v in pts[:, 2]])
        signals["occluded_by_occluded"][name] = {
            "sightings": int(sel.sum()), "mean_measured_occluded": round(float(pts[sel, 3].mean()), 3) if sel.any() else None}
    return {
        "track_frames": cfg.track_frames, "k": k, "clips": len(clips), "subjects": n["subjects"],
        "subjects_unmatched_to_an_object": n["subjects_unmatched"], "references": n["references"],
        "share_in_gt_top_k": share(n["references_in_gt_top_k"], n["references"]),
        "mean_gt_rank": round(float(np.mean(ranks)), 3) if ranks else None,
        "share_clean": share(n["references_clean"], n["references"]),
        "bad_references": n["references_bad"], "bad_share": share(n["references_bad"], n["references"]),
        "bad_truncated_over_0.25": n["references_bad_truncated"], "bad_occluded_over_0.5": n["references_bad_occluded"],
        "bad_first": bad[:8],
        "subjects_without_reference_though_clean_frame": n["subjects_without_reference_though_clean_frame"],
        "subjects_with_clean_frame_outside_window": n["subjects_with_clean_frame_outside_window"],
        "share_of_those_with_a_reference_outside": share(n["of_which_a_reference_outside_window"],
                                                         n["subjects_with_clean_frame_outside_window"]),
        "unclean_outside_references_chosen_over_unused_clean_inside":
            n["references_outside_window_not_clean_while_clean_inside_unused"],
        "signals": signals,
    }


# -- (b) identities ---------------------------------------------------------------------------------------------------
def identities(sources: int, cfg: SubjectsConfig) -> dict:
    """Cross-clip pairs of every source: (source, clip a, subject a, clip b, subject b, same object, cosine)."""
    per_source = []
    duplicates = 0
    for seed in range(sources):
        rows, names = [], {}
        for clip in S.source_clips(seed):
            found = S.find(clip, cfg)
            rows.append(S.manifest_row(clip.name, found))
            objects = [clip.actor_at(s["label"], s["frame"], s["bbox"]) for s in found.subjects]
            duplicates += len(objects) - len(set(objects))
            names.update({(clip.name, k): o for k, o in enumerate(objects)})
        per_source.append((rows, names))
    default = IdentitiesConfig().similarity
    sweep = []
    for threshold in sorted({*SWEEP, default}):
        tp = fp = fn = other_right = other_all = 0
        for rows, names in per_source:
            record = source_record(rows, IdentitiesConfig(similarity=threshold, max_others=8))
            ident = {(r["clip_id"], r["subject"]): r["identity"] for r in record}
            keys = sorted(ident)
            for i, a in enumerate(keys):
                for b in keys[i + 1:]:
                    if a[0] == b[0]:
                        continue
                    truth = names[a] is not None and names[a] == names[b]
                    said = ident[a] == ident[b]
                    tp, fp, fn = tp + (truth and said), fp + (said and not truth), fn + (truth and not said)
            for r in record:
                for o in r["others"]:
                    other_all += 1
                    other_right += names[(r["clip_id"], r["subject"])] == names[(o["clip_id"], o["subject"])]
        sweep.append({"similarity": threshold, "precision": share(tp, tp + fp), "recall": share(tp, tp + fn),
                      "tp": tp, "fp": fp, "fn": fn, "other_clip_references": other_all,
                      "share_same_object": share(other_right, other_all)})
    cos = {"same_object": [], "same_label_other_object": [], "other_label": []}
    from curation.dedup.signals import embedding_array

    for rows, names in per_source:
        keys = [(r["clip_id"], k, s["label"]) for r in rows for k, s in enumerate(r["subjects"])]
        vectors = embedding_array([t["embedding"] for r in rows for t in r["subject_tracks"]])
        sim = vectors @ vectors.T
        for i, a in enumerate(keys):
            for j in range(i + 1, len(keys)):
                b = keys[j]
                if a[0] != b[0]:
                    same = names[a[:2]] is not None and names[a[:2]] == names[b[:2]]
                    kind = "same_object" if same else "same_label_other_object" if a[2] == b[2] else "other_label"
                    cos[kind].append(float(sim[i, j]))
    return {
        "sources": sources, "clips_per_source": 4, "same_object_kept_twice_in_a_clip": duplicates,
        "at_default": next(s for s in sweep if s["similarity"] == default),
        "sweep": sweep,
        "cosine_p1_p50_p99": {kind: [round(float(np.percentile(v, q)), 3) for q in (1, 50, 99)] if v else None
                              for kind, v in cos.items()},
        "pairs": {kind: len(v) for kind, v in cos.items()},
    }


# -- (c) cost -----------------------------------------------------------------------------------------------------------
def tar_bytes(data: bytes) -> int:
    return 512 + -(-len(data) // 512) * 512


def shard_bytes(metas_pngs: list[tuple[dict, list[bytes]]]) -> dict:
    """Per clip, mean bytes of the reference PNGs (raw and as tar members) and of the subject_tracks JSON."""
    refs, refs_tar, tracks, subjects = [], [], [], []
    for meta, pngs in metas_pngs:
        extra = pngs[len(meta["subjects"]):]
        refs.append(sum(map(len, extra)))
        refs_tar.append(sum(map(tar_bytes, extra)))
        tracks.append(len(json.dumps(meta["subject_tracks"])))
        subjects.append(len(meta["subjects"]))
    return {"subjects_per_clip": round(float(np.mean(subjects)), 2),
            "reference_png_bytes": round(float(np.mean(refs))), "reference_tar_bytes": round(float(np.mean(refs_tar))),
            "subject_tracks_json_bytes": round(float(np.mean(tracks)))}


def synthetic_bytes(clips: list[S.Clip]) -> dict:
    out = {}
    for name, cfg in (("before", SubjectsConfig(**BEFORE)), ("after", SubjectsConfig())):
        found = [S.find(c, cfg) for c in clips]
        out[name] = shard_bytes([({"subjects": f.subjects, "subject_tracks": f.tracks}, f.pngs) for f in found])
    return out


def cost(repeats: int) -> dict:
    from curation.config import load_job
    from curation.models.runtime import go_offline
    from curation.pipeline.row import Row
    from curation.run.executor import Chain
    from curation.stages import CPU_STAGES
    from curation.stages.subjects import SubjectStage
    from tiny_models.curation_models import save_tiny_models, tiny_overrides

    go_offline()
    paths = save_tiny_models(tempfile.mkdtemp(prefix="tiny-models-"))
    # Random weights: every box passes, and the clean-up lets ragged masks through, so crops are made and timed.
    base = tiny_overrides(paths, fixed_answer=True) + ["subjects.max_boxes_per_label=2"]
    cfg = load_job(None, base + ["encode.max_short_side=240", "filters.max_text_area=null"], input="-", output="-")
    with Chain(cfg, CPU_STAGES) as chain:
        clips = [r.with_meta(subject_labels=["person", "car"])
                 for r in chain([Row("source", str(VIDEO), {})]) if r.kind == "clip"]
    out = {"clips": len(clips), "frames": [c.meta["num_frames"] for c in clips],
           "size": f"{clips[0].meta['width']}x{clips[0].meta['height']}", "repeats": repeats}
    for name, sets in (("before", [f"subjects.{k}={v}" for k, v in BEFORE.items()]), ("after", [])):
        stage = SubjectStage(load_job(None, base + sets, input="-", output="-"))
        stage.setup()
        stage(clips[:1])  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            rows = stage(clips)
        seconds = time.perf_counter() - t
        errors = [r.meta["message"] for r in rows if r.kind == "error"]
        out[name] = {"clips_per_s": round(len(clips) * repeats / seconds, 3),
                     "seconds_per_clip": round(seconds / len(clips) / repeats, 3), "error_rows": len(errors),
                     **shard_bytes([(r.meta, r.pngs) for r in rows if r.kind == "clip"])}
    out["slowdown"] = round(out["after"]["seconds_per_clip"] / out["before"]["seconds_per_clip"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=60, help="(a): random synthetic clips")
    parser.add_argument("--sources", type=int, default=12, help="(b): sources of 4 synthetic clips")
    parser.add_argument("--repeats", type=int, default=2, help="(c): passes over the real clips per setting")
    parser.add_argument("--skip-cost", action="store_true", help="no (c) (the tiny models and the CPU stages)")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    clips = [S.random_clip(seed) for seed in range(args.clips)]
    defaults = SubjectsConfig()
    result = {
        "references": [references(clips, defaults), references(clips, replace(defaults, track_frames=9))],
        "identities": identities(args.sources, defaults),
        "bytes_synthetic_true_masks": synthetic_bytes(clips),
    }
    if not args.skip_cost:
        result["cost_tiny_models"] = cost(args.repeats)
    result["bench_seconds"] = round(time.perf_counter() - t, 1)
    path = write_result("subject_refs", result)
    print(json.dumps(result, indent=2))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Subject tracking, reference choice and identities across clips: how right they are against ground truth, and what
they cost.

    python -m benchmarks.subject_refs_bench [--clips 100] [--sources 24] [--repeats 3] [--skip-cost]

(a) References. Random synthetic clips (``benchmarks.subject_synthetic.random_clip``: a dog on a random path and
scale, maybe leaving or entering the frame, blurred for a few frames, crossed by a labelled car or an unlabelled pole;
a ball) go through ``clip_subjects`` with ground-truth detection and masks. Each kept subject's chosen references are
ranked among the frames looked at (the keyframe sighting excluded) by ground-truth quality: clean first (nothing
truncated, occluded or blurred), then larger visible area. Reported: the share of references in that top-k
(k = ``subjects.references``), their mean rank, the share that are clean, references from frames more than 25 %
truncated or 50 % occluded (with the first few listed), subjects left without a reference though a clean frame was
looked at, and, where a clean frame outside the training window was looked at, how often a reference comes from
outside it, and how often an unclean frame outside won over a clean one inside; objects kept as several subjects
(a track broken by a move over ``max_shift``). Also how the measured signals follow the truth: ``border_cut`` by
truncated share and ``occluded`` by occluded share. With the default ``track_frames`` and with 9.

(b) Identities. Sources of 4 synthetic clips sharing a dog and a ball (other places, sizes, exposure), with a
distractor dog of another look in about half of the clips, through ``clip_subjects`` and
``curation.identities.source_record``: precision and recall of cross-clip subject pairs (same ground-truth object)
at ``identities.similarity`` and over a sweep, the cosine of true and false pairs, the share of other-clip
references that show the same object, and the tracking faults identities inherit (a track switching between the
two dogs when they cross, so a subject's reference shows the other one). The embedding is
``subject_synthetic.describe``, a non-learned colour and gradient histogram (the tiny CLIP has random weights):
these numbers test the matching logic on a descriptor that separates these shapes, not a real CLIP.

(c) Cost. ``SubjectStage`` with the tiny random models (``tiny_models``) on the clips the CPU stages cut from
testvideo.mp4: clips/s with ``subjects.track_frames=1 subjects.references=0`` (one keyframe, as before tracking)
and with the defaults (the relaxed clean-up of ``tiny_overrides(fixed_answer=True)``: every box gives a subject and
every sighting may give a reference, the most work). The settings alternate, and per clip the fastest of the repeats
counts (wall time, and the process's CPU time, which another user of the machine inflates less). And the bytes a clip
adds to its shard: reference PNGs (raw, and as tar members with header and padding) and the ``subject_tracks`` JSON,
for the tiny models' (random, often frame-sized) masks and for the synthetic clips' true masks (320x180).

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
from curation.dedup.signals import embedding_array
from curation.identities import source_record

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT.parent / "shared" / "data" / "videos" / "testvideo.mp4"
BAD_TRUNCATED, BAD_OCCLUDED = 0.25, 0.5
SWEEP = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
BINS = ((0.0, 0.0), (0.0, 0.25), (0.25, 0.5), (0.5, 1.0))  # (lo, hi]: the first is exactly 0
BEFORE = {"track_frames": 1, "references": 0}  # one keyframe, no references: the stage before tracking


def share(n: int, d: int) -> float | None:
    return round(n / d, 3) if d else None


# -- (a) references ----------------------------------------------------------------------------------------------------
def gt_order(clip: S.Clip, actor: str, frames: list[int]) -> list[int]:
    """``frames`` where the actor is visible, best first by ground truth: clean ones, then larger visible area."""
    truth = clip.truth[actor]
    return sorted((f for f in frames if truth[f].area), key=lambda f: (not truth[f].clean, -truth[f].area, f))


def in_bin(value: float, lo: float, hi: float) -> bool:
    return value == 0 if hi == 0 else lo < value <= hi


def score_subject(clip: S.Clip, actor: str, subject: dict, track: dict, looked: list[int], k: int, n: dict,
                  ranks: list, bad: list) -> None:
    """Adds one kept subject's references, judged by the truth, to the counts ``n``, ``ranks`` and ``bad``."""
    truth = clip.truth[actor]
    order = gt_order(clip, actor, [f for f in looked if f != subject["frame"]])
    clean = [f for f in order if truth[f].clean]
    refs = [r["frame"] for r in track["references"]]
    n["subjects"] += 1
    n["references"] += len(refs)
    n["subjects_without_reference_though_clean_frame"] += not refs and bool(clean)
    for r in track["references"]:
        f, t = r["frame"], truth[r["frame"]]
        ranks.append(order.index(f) + 1)
        n["in_gt_top_k"] += order.index(f) < k
        n["clean"] += t.clean
        if t.truncated > BAD_TRUNCATED or t.occluded > BAD_OCCLUDED:
            n["bad_truncated" if t.truncated > BAD_TRUNCATED else "bad_occluded"] += 1
            point = next(p for p in track["track"] if p["frame"] == f)
            bad.append({"clip": clip.name, "object": actor, "frame": f, "in_window": r["in_window"],
                        "truncated": round(t.truncated, 2), "occluded": round(t.occluded, 2),
                        "border_cut": round(point["border_cut"], 2), "measured_occluded": round(point["occluded"], 2),
                        "quality": round(r["quality"], 2)})
    outside = [f >= clip.window_end for f in refs]
    if any(f >= clip.window_end for f in clean):
        n["subjects_with_clean_frame_outside_window"] += 1
        n["of_which_a_reference_outside_window"] += any(outside)
    if any(f < clip.window_end and f not in refs for f in clean):  # a clean frame inside was left for a worse one
        n["unclean_outside_over_clean_inside"] += sum(o and not truth[f].clean for f, o in zip(refs, outside))


def signals(points: np.ndarray, cfg: SubjectsConfig) -> dict:
    """How ``border_cut`` follows the truncated share and ``occluded`` the occluded share, per bin of the truth.
    ``points``: (truncated, border_cut, occluded, measured occluded) per sighting."""
    out = {"border_cut_by_truncated": {}, "occluded_by_occluded": {}}
    for lo, hi in BINS:
        name = f"{lo}-{hi}" if hi else "0"
        cut = points[[in_bin(v, lo, hi) for v in points[:, 0]], 1]
        out["border_cut_by_truncated"][name] = {
            "sightings": len(cut), "mean_border_cut": round(float(cut.mean()), 3) if len(cut) else None,
            "max_border_cut": round(float(cut.max()), 3) if len(cut) else None,
            "share_passing_max_border_cut": share(int((cut <= cfg.max_border_cut).sum()), len(cut))}
        occluded = points[[in_bin(v, lo, hi) for v in points[:, 2]], 3]
        out["occluded_by_occluded"][name] = {
            "sightings": len(occluded),
            "mean_measured_occluded": round(float(occluded.mean()), 3) if len(occluded) else None}
    return out


def references(clips: list[S.Clip], cfg: SubjectsConfig) -> dict:
    n: dict = defaultdict(int)
    ranks, bad, points = [], [], []
    for clip in clips:
        found = S.find(clip, cfg)
        looked = sorted(clip.looked_at(cfg.track_frames))
        objects = [clip.object_of(s) for s in found.subjects]
        n["unmatched"] += objects.count(None)
        n["split"] += sum(objects.count(a) > 1 for a in set(objects) - {None})
        for subject, track, actor in zip(found.subjects, found.tracks, objects):
            if actor is not None:
                score_subject(clip, actor, subject, track, looked, cfg.references, n, ranks, bad)
                points += [(t.truncated, p["border_cut"], t.occluded, p["occluded"]) for p in track["track"]
                           if clip.object_at(subject["label"], p["frame"], p["bbox"]) == actor
                           for t in [clip.truth[actor][p["frame"]]]]
    refs = n["references"]
    return {
        "track_frames": cfg.track_frames, "k": cfg.references, "clips": len(clips), "subjects": n["subjects"],
        "subjects_unmatched_to_an_object": n["unmatched"], "objects_kept_as_several_subjects": n["split"],
        "references": refs, "share_in_gt_top_k": share(n["in_gt_top_k"], refs),
        "mean_gt_rank": round(float(np.mean(ranks)), 3) if ranks else None, "share_clean": share(n["clean"], refs),
        "bad_references": n["bad_truncated"] + n["bad_occluded"],
        "bad_share": share(n["bad_truncated"] + n["bad_occluded"], refs),
        "bad_truncated_over_0.25": n["bad_truncated"], "bad_occluded_over_0.5": n["bad_occluded"],
        "bad_first": bad[:8],
        "subjects_without_reference_though_clean_frame": n["subjects_without_reference_though_clean_frame"],
        "subjects_with_clean_frame_outside_window": n["subjects_with_clean_frame_outside_window"],
        "share_of_those_with_a_reference_outside": share(n["of_which_a_reference_outside_window"],
                                                         n["subjects_with_clean_frame_outside_window"]),
        "unclean_outside_references_chosen_over_unused_clean_inside": n["unclean_outside_over_clean_inside"],
        "signals": signals(np.array(points), cfg),
    }


# -- (b) identities ----------------------------------------------------------------------------------------------------
def cross_clip_pairs(keys: list[tuple]) -> list[tuple[tuple, tuple]]:
    """Every pair of subject keys (clip id first) from two different clips."""
    return [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:] if a[0] != b[0]]


def same(names: dict, a: tuple, b: tuple) -> bool:
    """Whether subjects a and b ((clip id, subject) each) show the same ground-truth object."""
    return names[a[:2]] is not None and names[a[:2]] == names[b[:2]]


def source_subjects(sources: int, cfg: SubjectsConfig) -> tuple[list[tuple[list[dict], dict]], dict]:
    """Per source, its manifest-like rows and the object each subject shows ((clip id, subject) -> actor name);
    and tracking faults that identities inherit: objects kept twice in a clip, tracks that switch objects (two
    objects of one label crossing), references showing another object than the subject's keyframe crop."""
    out, n = [], defaultdict(int)
    for seed in range(sources):
        rows, names = [], {}
        for clip in S.source_clips(seed):
            found = S.find(clip, cfg)
            rows.append(S.manifest_row(clip.name, found))
            objects = [clip.object_of(s) for s in found.subjects]
            n["same_object_kept_twice_in_a_clip"] += len(objects) - len(set(objects))
            for s, track, obj in zip(found.subjects, found.tracks, objects):
                seen = {p["frame"]: clip.object_at(s["label"], p["frame"], p["bbox"]) for p in track["track"]}
                n["tracks_mixing_two_objects"] += len(set(seen.values()) - {None}) > 1
                n["references"] += len(track["references"])
                n["references_showing_another_object"] += sum(seen[r["frame"]] != obj for r in track["references"])
            names.update({(clip.name, k): o for k, o in enumerate(objects)})
        out.append((rows, names))
    return out, dict(n)


def matching(per_source: list[tuple[list[dict], dict]], threshold: float) -> dict:
    """Pair precision and recall of ``source_record``'s identities at ``threshold``, and the share of other-clip
    references that show the same object."""
    tp = fp = fn = right = others = 0
    for rows, names in per_source:
        record = source_record(rows, IdentitiesConfig(similarity=threshold, max_others=8))
        identity = {(r["clip_id"], r["subject"]): r["identity"] for r in record}
        for a, b in cross_clip_pairs(sorted(identity)):
            truth, said = same(names, a, b), identity[a] == identity[b]
            tp, fp, fn = tp + (truth and said), fp + (said and not truth), fn + (truth and not said)
        for r in record:
            others += len(r["others"])
            right += sum(same(names, (r["clip_id"], r["subject"]), (o["clip_id"], o["subject"])) for o in r["others"])
    return {"similarity": threshold, "precision": share(tp, tp + fp), "recall": share(tp, tp + fn), "tp": tp,
            "fp": fp, "fn": fn, "other_clip_references": others, "share_same_object": share(right, others)}


def cosines(per_source: list[tuple[list[dict], dict]]) -> dict[str, list[float]]:
    """The embedding cosine of every cross-clip pair, by kind: same object, same label, other label."""
    out: dict[str, list[float]] = {"same_object": [], "same_label_other_object": [], "other_label": []}
    for rows, names in per_source:
        keys = [(r["clip_id"], k, s["label"], i) for i, (r, k, s) in
                enumerate((r, k, s) for r in rows for k, s in enumerate(r["subjects"]))]
        vectors = embedding_array([t["embedding"] for r in rows for t in r["subject_tracks"]])
        for a, b in cross_clip_pairs(keys):
            kind = "same_object" if same(names, a, b) else "same_label_other_object" if a[2] == b[2] else "other_label"
            out[kind].append(float(vectors[a[3]] @ vectors[b[3]]))
    return out


def identities(sources: int, cfg: SubjectsConfig) -> dict:
    per_source, faults = source_subjects(sources, cfg)
    default = IdentitiesConfig().similarity
    cos = cosines(per_source)
    return {
        "sources": sources, "clips_per_source": 4, **faults,
        "at_default": matching(per_source, default),
        "sweep": [matching(per_source, t) for t in sorted({*SWEEP, default})],
        "cosine_p1_p50_p99": {kind: [round(float(np.percentile(v, q)), 3) for q in (1, 50, 99)] if v else None
                              for kind, v in cos.items()},
        "pairs": {kind: len(v) for kind, v in cos.items()},
    }


# -- (c) cost ----------------------------------------------------------------------------------------------------------
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
    from curation.models.runtime import go_offline
    from tiny_models.curation_models import save_tiny_models

    go_offline()
    with tempfile.TemporaryDirectory(prefix="tiny-models-") as folder:
        paths = save_tiny_models(folder)
        return stage_cost(paths, repeats)


def stage_cost(paths: dict, repeats: int) -> dict:
    from curation.config import load_job
    from curation.pipeline.row import Row
    from curation.run.executor import Chain
    from curation.stages import CPU_STAGES
    from curation.stages.subjects import SubjectStage
    from tiny_models.curation_models import tiny_overrides

    # Random weights: every box passes, and the clean-up lets ragged masks through, so crops are made and timed.
    base = tiny_overrides(paths, fixed_answer=True) + ["subjects.max_boxes_per_label=2"]
    cfg = load_job(None, base + ["encode.max_short_side=240", "filters.max_text_area=null"], input="-", output="-")
    with Chain(cfg, CPU_STAGES) as chain:
        clips = [r.with_meta(subject_labels=["person", "car"])
                 for r in chain([Row("source", str(VIDEO), {})]) if r.kind == "clip"]
    out = {"clips": len(clips), "frames": [c.meta["num_frames"] for c in clips],
           "size": f"{clips[0].meta['width']}x{clips[0].meta['height']}", "repeats": repeats}
    stages = {}
    for name, sets in (("before", [f"subjects.{k}={v}" for k, v in BEFORE.items()]), ("after", [])):
        stages[name] = SubjectStage(load_job(None, base + sets, input="-", output="-"))
        stages[name].setup()
        stages[name](clips[:1])  # warm-up
    # The machine is shared: settings interleaved, and per clip the fastest of the repeats (wall) and its
    # process CPU time (all threads), which other load inflates less.
    wall = {name: [np.inf] * len(clips) for name in stages}
    cpu = {name: [np.inf] * len(clips) for name in stages}
    rows = {name: [None] * len(clips) for name in stages}
    for _ in range(repeats):
        for name, stage in stages.items():
            for i, clip in enumerate(clips):
                w, c = time.perf_counter(), time.process_time()
                [rows[name][i]] = stage([clip])
                wall[name][i] = min(wall[name][i], time.perf_counter() - w)
                cpu[name][i] = min(cpu[name][i], time.process_time() - c)
    for name in stages:
        done = [r for r in rows[name] if r.kind == "clip"]
        out[name] = {"clips_per_s": round(len(clips) / sum(wall[name]), 3),
                     "wall_s_per_clip": round(sum(wall[name]) / len(clips), 3),
                     "cpu_s_per_clip": round(sum(cpu[name]) / len(clips), 3), "error_rows": len(clips) - len(done),
                     **shard_bytes([(r.meta, r.pngs) for r in done])}
    out["slowdown_wall"] = round(out["after"]["wall_s_per_clip"] / out["before"]["wall_s_per_clip"], 2)
    out["slowdown_cpu"] = round(out["after"]["cpu_s_per_clip"] / out["before"]["cpu_s_per_clip"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100, help="(a): random synthetic clips")
    parser.add_argument("--sources", type=int, default=24, help="(b): sources of 4 synthetic clips")
    parser.add_argument("--repeats", type=int, default=3, help="(c): passes over the real clips per setting")
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

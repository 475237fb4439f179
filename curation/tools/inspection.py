"""Commands on an existing dataset (local or s3://): ``stats``, ``validate`` and ``show``.

Shards are only ever streamed: member bytes are read in memory, never extracted to the paths they name, and the
JSON members are parsed as JSON (nothing is unpickled), so a hostile or broken dataset cannot write anywhere.
"""

from __future__ import annotations

import io
import textwrap
from collections import Counter, defaultdict

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common import contract as C
from common.shard_reader import ShardCorrupt, iter_samples, parse_json
from common.storage import Storage

SCORES = ("motion", "blank_frac", "luma", "contrast", "aesthetic")  # the manifest's filter scores


def clip_members(output: str, storage: Storage, row: dict) -> dict[str, bytes]:
    """The members of one clip (``mp4``, ``json``, ...) from its shard."""
    uri = storage.join(output, C.SHARDS_DIR, f"{row['shard']}.tar")
    with storage.open(uri) as f:
        try:
            return next((s.members for s, _, _ in iter_samples(f, 0, 0, 0) if s.key == row["clip_id"]), {})
        except ShardCorrupt as e:
            raise ShardCorrupt(f"{uri}: damaged ({e}): clip {row['clip_id']!r} cannot be read; run `python -m "
                               f"curation validate {output}`") from None


def expected_members(row: dict) -> set[str]:
    members = {C.MP4, C.JSON} | ({C.CAPTION} if row["caption"] is not None else set())
    return members | set(C.png_members(row))


def clip_frames(mp4: bytes, count: int = 3) -> list[Image.Image]:
    """``count`` frames spread evenly over a clip (first, middle, last for 3); only those are converted."""
    with av.open(io.BytesIO(mp4)) as c:
        total = c.streams.video[0].frames or sum(1 for p in c.demux(video=0) if p.size)
    wanted = np.linspace(0, max(total - 1, 0), count).round().astype(int).tolist()
    with av.open(io.BytesIO(mp4)) as c:
        images = {i: f.to_image() for i, f in enumerate(c.decode(video=0)) if i in wanted}
    return [images[i] for i in wanted if i in images]


def _quantiles(values: list[float]) -> dict | None:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not v.size:
        return None
    q = np.quantile(v, [0, 0.1, 0.5, 0.9, 1])
    return {"count": int(v.size), **{k: round(float(x), 4) for k, x in zip(("min", "p10", "median", "p90", "max"), q)}}


# -- stats ----------------------------------------------------------------------------------------------------
def dataset_stats(output: str, storage: Storage, rows: list[dict] | None = None) -> dict:
    """Clips, hours, per source, per filter score and subjects per clip, from the manifest (``rows``, read when
    not given) and the done markers."""
    rows = C.read_manifest(storage, output).to_pylist() if rows is None else rows
    per_source: dict[str, dict] = defaultdict(lambda: {"clips": 0, "seconds": 0.0})
    for r in rows:
        s = per_source[r["source_uri"]]
        s["clips"] += 1
        s["seconds"] += r["end_s"] - r["start_s"]
    without = []
    status = Counter()
    for m in C.read_done_markers(storage, output):
        status[m["status"]] += 1
        if m["status"] == "ok" and m["uri"] not in per_source:
            # A done source with no candidate clip had no scene as long as the shortest clip.
            why = ("every candidate clip was dropped by a filter" if m["clips"] else
                   "no scene as long as the shortest clip (scenes.min_clip_s, or the training window's)")
            without.append({"uri": m["uri"], "candidate_clips": m["clips"], "reason": why})
    errors = C.read_errors(storage, output).to_pylist()
    seconds = sum(s["seconds"] for s in per_source.values())
    dedup = C.read_dedup(storage, output)
    subjects = Counter(len(r["subjects"]) for r in rows)
    window = C.TRAINING_WINDOW
    frames = Counter(window.frames_for(r["fps"], r["num_frames"]) for r in rows)
    return {
        "output": output,
        "clips": len(rows),
        "hours": round(seconds / 3600, 6),
        "shards": len({r["shard"] for r in rows}),
        "sources": {"done": status["ok"], "failed": status["error"], "with_clips": len(per_source),
                    "without_clips": without},
        "per_source": {u: {"clips": s["clips"], "seconds": round(s["seconds"], 3)} for u, s in sorted(per_source.items())},
        "scores": {k: _quantiles([r[k] for r in rows]) for k in SCORES},
        "subjects_per_clip": {str(k): subjects[k] for k in sorted(subjects)},
        "captioned": sum(r["caption"] is not None for r in rows),
        # What the default trainer takes from each clip (common.contract.TrainingWindow), and what it cannot use.
        "training_window": {"fps": window.fps, "frames": {str(k): frames[k] for k in sorted(filter(None, frames))},
                            "too_short": frames[None]},
        "errors": dict(Counter(f"{e['stage']}/{e['error_type']}" for e in errors)),
        "near_duplicates": None if dedup is None else near_duplicate_stats(rows, dedup.to_pylist()),
        "grounding": grounding_stats(rows),
        "references": reference_stats(rows, C.read_identities(storage, output)),
    }


GROUNDING_EXAMPLES = 3  # clip ids per label and status


def grounding_stats(rows: list[dict]) -> dict:
    """Per caption label: how many clips named it, the share where it was grounded (a kept subject with a crop),
    its other statuses (not_found, dropped:<why>) and the first few clip ids of each."""
    per: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["clip_id"]):
        for g in r.get("subject_grounding") or []:
            entry = per.setdefault(g["label"], {"named": 0, "status": Counter(), "examples": defaultdict(list)})
            entry["named"] += 1
            entry["status"][g["status"]] += 1
            if len(entry["examples"][g["status"]]) < GROUNDING_EXAMPLES:
                entry["examples"][g["status"]].append(r["clip_id"])
    ranked = sorted(per.items(), key=lambda kv: (-kv[1]["named"], kv[0]))
    return {label: {"named": e["named"], "grounded_share": round(e["status"]["grounded"] / e["named"], 4),
                    "status": dict(e["status"]), "examples": dict(e["examples"])} for label, e in ranked}


def reference_stats(rows: list[dict], identities) -> dict:
    """How many kept subjects have references from other frames, outside the training window, and (with an
    identity record) from other clips."""
    tracks = [t for r in rows for t in r.get("subject_tracks") or []]
    refs = [x for t in tracks for x in t["references"]]
    out = {"subjects": sum(len(r["subjects"] or []) for r in rows), "with_other_frames": sum(bool(t["references"]) for t in tracks),
           "references": len(refs), "outside_window": sum(not x["in_window"] for x in refs), "identity_record": identities is not None}
    if identities is not None:
        record = identities.to_pylist()
        sizes = Counter(x["identity"] for x in record)
        out.update(with_other_clips=sum(bool(x["others"]) for x in record), identities=len(sizes),
                   identities_across_clips=sum(n > 1 for n in sizes.values()))
    return out


def near_duplicate_stats(rows: list[dict], record: list[dict]) -> dict:
    """What the dedup record says of the manifest ``rows``: groups, clips removed, what training keeps, and the
    clips committed since the record was made (which it does not judge: run dedup again)."""
    removed = {r["clip_id"] for r in record if not r["kept"]}
    judged = {r["clip_id"] for r in record}
    kept_s = sum(r["end_s"] - r["start_s"] for r in rows if r["clip_id"] not in removed)
    return {"groups": len({r["group"] for r in record if r["group"] is not None}), "removed": len(removed),
            "clips_kept": sum(r["clip_id"] not in removed for r in rows), "hours_kept": round(kept_s / 3600, 6),
            "not_in_record": sum(r["clip_id"] not in judged for r in rows)}


def format_stats(s: dict) -> str:
    src = s["sources"]
    lines = [
        f"dataset: {s['output']}",
        f"clips: {s['clips']} in {s['shards']} shard(s), {s['hours']:.3f} h, {s['captioned']} captioned",
        f"sources: {src['done']} done ({src['with_clips']} with clips, {len(src['without_clips'])} without), "
        f"{src['failed']} failed",
    ]
    lines += [f"  no clip: {w['uri']}: {w['reason']}" for w in src["without_clips"]]
    tw = s["training_window"]
    lines.append(f"training window (frames at {tw['fps']} fps, clips): "
                 + (", ".join(f"{k}: {n}" for k, n in tw["frames"].items()) or "-")
                 + f"; too_short: {tw['too_short']}" + (" (the default trainer skips them)" if tw["too_short"] else ""))
    lines.append("subjects per clip: " + (", ".join(f"{k}: {n}" for k, n in s["subjects_per_clip"].items()) or "-"))
    lines.append("filter scores of the kept clips (count, min, p10, median, p90, max):")
    for name, q in s["scores"].items():
        lines.append(f"  {name:<10} " + ("no values" if q is None else
                                         f"{q['count']:>6} " + " ".join(f"{q[k]:>9.3f}" for k in ("min", "p10", "median", "p90", "max"))))
    nd = s["near_duplicates"]
    lines.append("near duplicates: " + ("no dedup record (python -m curation dedup)" if nd is None else
                 f"{nd['removed']} clips removed in {nd['groups']} groups; training keeps {nd['clips_kept']} clips, "
                 f"{nd['hours_kept']:.3f} h" + (f"; {nd['not_in_record']} clips committed since the record: run "
                                                 "dedup again" if nd["not_in_record"] else "")))
    ref = s["references"]
    lines.append(f"subject references: {ref['subjects']} subjects, {ref['with_other_frames']} with crops from other "
                 f"frames ({ref['references']} crops, {ref['outside_window']} outside the training window); "
                 + (f"{ref['with_other_clips']} with crops from other clips, {ref['identities_across_clips']} of "
                    f"{ref['identities']} identities in more than one clip" if ref["identity_record"] else
                    "no identity record (python -m curation identities)"))
    lines.append("grounding (caption label: clips naming it, share grounded, other statuses):")
    lines += [f"  {label}: {g['named']}, {g['grounded_share']:.0%}"
              + "".join(f", {k} {n}" for k, n in g["status"].items() if k != "grounded")
              for label, g in list(s["grounding"].items())[:20]]
    lines.append("errors: " + (", ".join(f"{k}: {n}" for k, n in s["errors"].items()) or "none"))
    lines.append("per source (clips, seconds):")
    lines += [f"  {v['clips']:>6} {v['seconds']:>9.1f}  {u}" for u, v in s["per_source"].items()]
    return "\n".join(lines)


# -- validate -------------------------------------------------------------------------------------------------
def validate(output: str, storage: Storage) -> list[str]:
    """Every problem found: manifest rows without their members, members without a manifest row, unreadable
    shards or manifest parts, unsafe member names, JSON members that do not match their row. Empty when valid."""
    problems: list[str] = []  # an unreadable manifest part is one, the others are still checked
    rows = C.read_parquet_dir(storage, storage.join(output, C.MANIFEST_DIR), C.MANIFEST_SCHEMA,
                              unreadable=problems).to_pylist()
    expected: dict[tuple[str, str], set[str]] = {}
    for clip_id, n in Counter(r["clip_id"] for r in rows).items():
        if n > 1:
            problems.append(f"clip {clip_id!r}: {n} manifest rows")
        if not _safe_key(clip_id):
            problems.append(f"clip {clip_id!r}: unsafe key (only letters, digits, '_' and '-' are allowed)")
    for r in rows:
        expected[(r["shard"], r["clip_id"])] = expected_members(r)
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    shards = set()
    for uri in storage.list(storage.join(output, C.SHARDS_DIR), ".tar"):
        shard = uri.rsplit("/", 1)[-1].removesuffix(".tar")
        shards.add(shard)
        problems += _check_shard(storage, uri, shard, expected, found)
    if not rows and not shards:
        problems.append(f"{output}: no manifest part and no shard: not a dataset, or an empty one")
    problems += _check_dedup(storage, output, {r["clip_id"] for r in rows})
    problems += _check_identities(storage, output, rows)
    problems += _check_offsets(storage, output, rows, shards)
    for (shard, clip_id), members in expected.items():
        missing = members - found.get((shard, clip_id), set())
        if shard not in shards:
            problems.append(f"clip {clip_id}: its shard {shard}.tar does not exist")
        elif missing:
            problems.append(f"clip {clip_id}: missing from {shard}.tar: {', '.join(sorted(missing))}")
    for (shard, clip_id), members in sorted(found.items()):
        extra = members - expected.get((shard, clip_id), set())
        if extra:
            problems.append(f"{shard}.tar: member(s) with no manifest row: {', '.join(f'{clip_id}.{m}' for m in sorted(extra))}")
    return problems


def _check_dedup(storage: Storage, output: str, clips: set[str]) -> list[str]:
    """The dedup record judges clips of this manifest only, and each group names a clip it keeps."""
    where = f"{C.DEDUP_DIR}/{C.DEDUP_FILE}"
    try:
        table = C.read_dedup(storage, output)
    except ValueError as e:
        return [str(e)]
    if table is None:
        return []
    record = table.to_pylist()
    problems = [f"{where}: clip {r['clip_id']!r} is not in the manifest (run `python -m curation dedup` again)"
                for r in record if r["clip_id"] not in clips]
    kept = {r["clip_id"] for r in record if r["kept"]}
    problems += [f"{where}: clip {r['clip_id']!r} is in group {r['group']!r}, which is not a kept clip"
                 for r in record if r["group"] is not None and r["group"] not in kept]
    problems += [f"{where}: clip {r['clip_id']!r} is removed but in no group" for r in record
                 if not r["kept"] and r["group"] is None]
    return problems


def _check_identities(storage: Storage, output: str, rows: list[dict]) -> list[str]:
    """The identity record names subjects of this manifest, and its crops are members the manifest lists where it
    says they lie."""
    where = f"{C.IDENTITY_DIR}/{C.IDENTITY_FILE}"
    try:
        table = C.read_identities(storage, output)
    except ValueError as e:
        return [str(e)]
    if table is None:
        return []
    by_id = {r["clip_id"]: r for r in rows}
    problems = []
    for r in table.to_pylist():
        clip = by_id.get(r["clip_id"])
        if clip is None or r["subject"] >= len(clip["subjects"] or []):
            problems.append(f"{where}: subject {r['subject']} of clip {r['clip_id']!r} is not in the manifest (run "
                            "`python -m curation identities` again)")
            continue
        for o in r["others"]:
            other = by_id.get(o["clip_id"])
            spans = {(x["member"], x["offset"], x["size"]) for x in (other or {}).get("member_offsets") or []}
            if other is None or other["shard"] != o["shard"] or (o["member"], o["offset"], o["size"]) not in spans:
                problems.append(f"{where}: clip {r['clip_id']!r} subject {r['subject']}: its reference "
                                f"{o['clip_id']}.{o['member']} is not where the manifest says (run `python -m "
                                "curation identities` again)")
    return problems


def _check_offsets(storage: Storage, output: str, rows: list[dict], shards: set[str]) -> list[str]:
    """Each crop's byte range (``member_offsets``) starts a PNG in its shard: one line per shard where some do not
    (a member rewritten in place moves every one after it)."""
    problems = []
    by_shard = defaultdict(list)
    for r in rows:
        if r["shard"] in shards:
            by_shard[r["shard"]] += [(r["clip_id"], o) for o in r.get("member_offsets") or []]
    for shard, spans in sorted(by_shard.items()):
        wrong = []
        with storage.open(storage.join(output, C.SHARDS_DIR, f"{shard}.tar")) as f:
            for clip_id, o in spans:
                f.seek(o["offset"])
                if f.read(8) != b"\x89PNG\r\n\x1a\n":
                    wrong.append(f"{clip_id}.{o['member']} (byte {o['offset']})")
        if wrong:
            problems.append(f"{shard}.tar: {len(wrong)} crop(s) not at the byte ranges the manifest gives (range "
                            f"reads of them fail), the first: {wrong[0]}")
    return problems


def _safe_key(key: str) -> bool:
    try:
        C.check_clip_id(key)
    except ValueError:
        return False
    return True


def _check_shard(storage: Storage, uri: str, shard: str, expected: dict, found: dict) -> list[str]:
    problems = []

    def reject(name: str, why: str) -> None:
        problems.append(f"{shard}.tar: unsafe or unknown member {name!r} ({why})")

    try:
        with storage.open(uri) as f:
            for sample, _, _ in iter_samples(f, 0, 0, 0, reject=reject, fields=lambda field: True):
                key = sample.key
                for member, data in sample.members.items():
                    name = f"{key}.{member}"
                    if not C.is_field(member):
                        reject(name, "not a field of the contract")
                        continue
                    if member in found[(shard, key)]:
                        problems.append(f"{shard}.tar: member {name} appears twice")
                    found[(shard, key)].add(member)
                    if member == C.JSON and (shard, key) in expected:
                        try:
                            ok = parse_json(data).get("clip_id") == key
                        except ValueError:
                            ok = False
                        if not ok:
                            problems.append(f"{shard}.tar: {name} is not the JSON of clip {key}")
    except (ShardCorrupt, OSError) as e:
        problems.append(f"{shard}.tar: not a readable tar: {e}")
    return problems


# -- show -----------------------------------------------------------------------------------------------------
def checkerboard(size: tuple[int, int], cell: int = 8) -> Image.Image:
    """A grey checkerboard, the usual background that makes transparency visible."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    board = np.where((yy // cell + xx // cell) % 2 == 0, 204, 153).astype(np.uint8)
    return Image.fromarray(board, "L").convert("RGBA")


def on_checkerboard(png: bytes, height: int) -> Image.Image:
    crop = Image.open(io.BytesIO(png)).convert("RGBA")
    crop = crop.resize((max(1, round(crop.width * height / crop.height)), height))
    return Image.alpha_composite(checkerboard(crop.size), crop).convert("RGB")


def show_clip(output: str, storage: Storage, clip_id: str, frames: int = 6, thumb_h: int = 160) -> Image.Image:
    """One image: the clip's frames, its subject crops on a checkerboard with label and score, its metadata."""
    rows = [r for r in C.read_manifest(storage, output).to_pylist() if r["clip_id"] == clip_id]
    if not rows:
        raise LookupError(f"clip {clip_id!r} is not in the manifest of {output}")
    row = rows[0]
    members = clip_members(output, storage, row)
    if C.MP4 not in members:
        raise LookupError(f"clip {clip_id!r} has no mp4 in {row['shard']}.tar (run validate)")
    font = ImageFont.load_default(size=14)
    thumbs = [f.resize((max(1, round(f.width * thumb_h / f.height)), thumb_h)) for f in clip_frames(members[C.MP4], frames)]
    crops = []  # each subject's keyframe crop, then its references from other frames
    tracks = row["subject_tracks"] or []
    for k, s in enumerate(row["subjects"]):
        if C.subject_member(k) in members:
            crops.append((f"{s['label']} {s['score']:.2f}", on_checkerboard(members[C.subject_member(k)], thumb_h)))
        for ref in tracks[k]["references"] if k < len(tracks) else []:
            if ref["member"] in members:
                crops.append((f"ref f{ref['frame']} q{ref['quality']:.2f}", on_checkerboard(members[ref["member"]], thumb_h)))
    long = ("subjects", "caption", "subject_tracks", "subject_grounding", "member_offsets", "embedding")
    text = [f"{k}: {round(v, 4) if isinstance(v, float) else v}" for k, v in row.items() if k not in long]
    text += textwrap.wrap("grounding: " + ", ".join(f"{g['label']} {g['status']}" for g in row["subject_grounding"]
                                                    or []), 110) if row["subject_grounding"] else []
    text += textwrap.wrap(f"caption: {row['caption']}", 110) if row["caption"] else ["caption: none"]
    width = max(900, sum(t.width + 6 for t in thumbs), sum(max(c.width, 150) + 10 for _, c in crops))
    line = 18
    height = 10 + thumb_h + 10 + (thumb_h + 2 * line + 10 if crops else 0) + line * len(text) + 10
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    x, y = 0, 10
    for t in thumbs:
        sheet.paste(t, (x, y))
        x += t.width + 6
    y += thumb_h + 10
    if crops:
        x = 0
        for label, c in crops:
            sheet.paste(c, (x, y))
            draw.text((x, y + thumb_h + 2), label, fill="black", font=font)
            x += max(c.width, round(draw.textlength(label, font=font))) + 10
        y += thumb_h + 2 * line + 10
    for t in text:
        draw.text((4, y), t, fill="black", font=font)
        y += line
    return sheet

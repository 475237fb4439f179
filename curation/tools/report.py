"""The run summary (printed) and report.html: one self-contained page (images inlined) with the dataset, every
filter with its threshold, pass rate and rejected examples, histograms with the thresholds drawn, time and
throughput per stage, errors grouped by stage and type, and sample clips with their scores, caption and crops."""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from pathlib import PurePosixPath

import av
import numpy as np
from PIL import Image, ImageDraw

from common import contract as C
from common.storage import Storage

from curation.config import JobConfig
from curation.sink.writer import RunStats
from curation.stages import pipeline
from curation.tools.card import write_card
from curation.tools.inspection import clip_frames, clip_members, dataset_stats

DEDUP_PAGE = "report.html"  # under common.contract.DEDUP_DIR: the dedup job's page of groups


def summary_text(stats: RunStats, seconds: float, sources_total: int, sources_skipped: int, cpus: int) -> str:
    s = stats
    lines = [
        f"sources: {sources_total} found, {sources_skipped} skipped (done before), {s.sources_done} done, {s.sources_failed} failed, "
        f"{s.sources_duplicate} byte-identical copies of another, {len(s.environment) + len(s.job_faults)} left for "
        "the rerun (environment or job faults)",
        f"clips: {s.clips_written} written in {s.shards_written} shard(s), {s.clips_duplicate} already present, "
        f"dropped {dict(s.dropped) or 0}",
        f"video: {s.source_seconds / 3600:.3f} h of source, {s.clip_seconds / 3600:.3f} h of clips, {s.bytes_written / 1e6:.1f} MB",
        f"read: {s.source_bytes / 1e6:.1f} MB of sources, {s.source_bytes_read / max(s.source_bytes, 1):.3f} bytes read "
        "from storage per source byte",
        f"errors: {dict(s.errors) or 'none'}",
        f"time: {seconds:.1f} s, {s.clips_written / max(seconds, 1e-9):.2f} clips/s, "
        f"{s.source_seconds / max(seconds, 1e-9) / max(cpus, 1):.2f} video-s/s per core ({cpus} cores)",
    ]
    return "\n".join(lines)


# -- images ---------------------------------------------------------------------------------------------------
def _thumb(image: Image.Image, height: int) -> Image.Image:
    return image.resize((max(1, round(image.width * height / image.height)), height))


def contact_sheet(rows: list[tuple[str, list[Image.Image]]], thumb_h: int = 96) -> Image.Image:
    """One row per clip: its id, then its frames."""
    rows = [(clip_id, [_thumb(f, thumb_h) for f in frames]) for clip_id, frames in rows]
    label_w = 260
    width = label_w + max((sum(f.width + 4 for f in fr) for _, fr in rows), default=0)
    sheet = Image.new("RGB", (max(width, label_w), max(1, len(rows)) * (thumb_h + 6)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (clip_id, frames) in enumerate(rows):
        y = i * (thumb_h + 6)
        draw.text((4, y + thumb_h // 2 - 6), clip_id, fill="black")
        x = label_w
        for f in frames:
            sheet.paste(f, (x, y))
            x += f.width + 4
    return sheet


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _img(data: bytes, mime: str = "image/png", cls: str = "") -> str:
    return f'<img class="{cls}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    scale = min(width / image.width, height / image.height)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


def _jpeg(image: Image.Image, width: int, height: int) -> str:
    return _img(_encode(_fit(image.convert("RGB"), width, height), "JPEG"), "image/jpeg")


def _histogram(values: list, title: str, xlabel: str, lines: list[tuple[float, str]] = (), integer: bool = False) -> str:
    """A histogram with integer counts (and integer bins when ``integer``) and the thresholds as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    values = [v for v in values if v is not None]
    fig, ax = plt.subplots(figsize=(4.6, 2.8), dpi=90)
    # The range takes in the thresholds, so a line is drawn even where no clip scores near it.
    lo, hi = min([*values, *(x for x, _ in lines)]), max([*values, *(x for x, _ in lines)])
    if integer:
        lo = min(lo, 0)
        ax.hist(values, bins=np.arange(lo - 0.5, hi + 1.5), color="#3b7dd8")
        ax.set_xticks(range(int(lo), int(hi) + 1) if hi - lo <= 20 else MaxNLocator(integer=True).tick_values(lo, hi))
    else:
        ax.hist(values, bins=30, range=(lo, hi if hi > lo else lo + 1), color="#3b7dd8")
    for x, label in lines:
        ax.axvline(x, color="#d62728", linestyle="--", linewidth=1.5, label=label)
    if lines:
        ax.legend(fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title} ({len(values)} clips)", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return _img(buf.getvalue())


def _source_frame(storage: Storage, meta: dict) -> Image.Image | None:
    """The middle frame of a dropped clip, read from its source: filters drop clips before they are encoded."""
    from curation.video.decode import VideoError, open_video

    t = (meta["start_s"] + meta["end_s"]) / 2
    try:
        with open_video(meta["source_uri"], storage) as (container, stream, _):
            container.seek(int(t / stream.time_base), stream=stream)
            for frame in container.decode(stream):
                if frame.time is None or frame.time >= t - 0.05:
                    return frame.to_image().rotate(-meta.get("rotation", 0), expand=True)
    except (VideoError, av.error.FFmpegError, OSError):
        return None  # the source moved or is unreadable now: the example keeps its text
    return None


# -- sections -------------------------------------------------------------------------------------------------
def _e(x) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _name(uri: str) -> str:
    return PurePosixPath(uri).name


def _limit(limit: tuple[float, str]) -> str:
    seconds, source = limit
    return f"{source} = {seconds:g} s" if source.startswith("scenes.") else f"{source}, about {seconds:g} s"


def _filters(cfg: JobConfig) -> dict[str, tuple[str, str | None]]:
    """Every filter of the job: its rule with the threshold from the config, and the score it reads."""
    f, sc = cfg.filters, cfg.scenes
    motion = f"motion &lt; filters.min_motion = {f.min_motion:g}"
    if f.max_motion is not None:
        motion += f" or &gt; filters.max_motion = {f.max_motion:g}"
    rules = {
        "too_short": (f"a scene shorter than {_limit(sc.limits_s()[0])} makes no candidate clip "
                      f"(counts scenes, not candidate clips)", None),
        "blank": (f"blank_frac &gt; filters.max_blank_frac = {f.max_blank_frac:g}, or no content left once blank "
                  f"and fading frames are trimmed", "blank_frac"),
        "resolution": (f"width &lt; filters.min_width = {f.min_width} or height &lt; filters.min_height = {f.min_height}",
                       "width"),
        "motion": (motion, "motion"),
        "damaged": ((f"damaged_frames &gt; filters.max_damaged_frames = {f.max_damaged_frames}" if f.max_damaged_frames
                     is not None else "filters.max_damaged_frames not set: keeps damaged clips (flagged in the manifest)"),
                    "damaged_frames"),
    }
    if cfg.encode.hdr == "drop":
        rules["hdr"] = ("an HDR source (color_transfer smpte2084 = PQ, or arib-std-b67 = HLG) and encode.hdr = drop: "
                        "the whole source, undecoded", None)
    if cfg.text.enabled:
        rules["text"] = ((f"text_area &gt; filters.max_text_area = {f.max_text_area:g} (the share of the frame covered by "
                          f"text boxes, in the most covered of {cfg.text.num_frames} frame(s) of the training window)"
                          if f.max_text_area is not None else
                          "filters.max_text_area not set: keeps every clip (text_area and text_frames in the manifest)"),
                         "text_area")
    if cfg.aesthetic.enabled:
        rules["aesthetic"] = ((f"aesthetic &lt; aesthetic.min_score = {cfg.aesthetic.min_score:g}"
                               if cfg.aesthetic.min_score is not None else "aesthetic.min_score not set: keeps every clip"),
                              "aesthetic")
    return rules


def _example(storage: Storage, meta: dict, score: str | None) -> str:
    if meta["dropped_by"] == "too_short":
        text = f"{_e(_name(meta['source_uri']))} ({meta['end_s']:.2f} s): {meta['num_scenes']} short scene(s)"
        return f"<div class='ex'>{text}</div>"
    frame = _source_frame(storage, meta)
    value = meta.get(score)
    shown = f"{score} {value:.3g}" if isinstance(value, (int, float)) and score != "width" else f"{meta['width']}x{meta['height']}"
    text = f"{_e(_name(meta['source_uri']))} {meta['start_s']:.2f}-{meta['end_s']:.2f} s<br>{_e(shown)}"
    return f"<div class='ex'>{_jpeg(frame, 96, 54) if frame else ''}<br>{text}</div>"


def _filter_section(cfg: JobConfig, storage: Storage, stats: RunStats) -> str:
    candidates = len(stats.motion_all)
    rules = _filters(cfg)
    rows = []
    for name in [*rules, *(k for k in stats.dropped if k not in rules)]:
        rule, score = rules.get(name, ("(not described)", None))
        n = stats.dropped.get(name, 0)
        rate = "n/a" if name == "too_short" or not candidates else f"{1 - n / candidates:.1%}"
        examples = "".join(_example(storage, m, score) for m in stats.rejected.get(name, []))
        rows.append([f"<b>{_e(name)}</b>", rule, n, rate, examples or "-"])
    kept = candidates - sum(v for k, v in stats.dropped.items() if k != "too_short")
    head = (f"<p>{candidates} candidate clips this run; {kept} passed every filter "
            f"({kept / max(candidates, 1):.1%}). Pass rate: the share of candidates a filter let through.</p>")
    return "<h2>Filters (this run)</h2>" + head + _table(["filter", "drops when", "dropped", "pass rate", "rejected examples"], rows)


def _histograms(cfg: JobConfig, stats: RunStats, rows: list[dict]) -> str:
    f, sc = cfg.filters, cfg.scenes
    plots = []
    if rows:
        plots.append(_histogram([r["end_s"] - r["start_s"] for r in rows], "clip length (kept)", "seconds",
                                list(sc.limits_s())))
    if stats.motion_all:
        lines = [(f.min_motion, "filters.min_motion")] + ([(f.max_motion, "filters.max_motion")] if f.max_motion is not None else [])
        plots.append(_histogram(stats.motion_all, "motion (all candidates, this run)", "mean frame difference", lines))
    if rows:
        plots.append(_histogram([r["blank_frac"] for r in rows], "blank frames (kept)", "blank_frac",
                                [(f.max_blank_frac, "filters.max_blank_frac")]))
    if any(r.get("text_area") is not None for r in rows):
        lines = [(f.max_text_area, "filters.max_text_area")] if f.max_text_area is not None else []
        plots.append(_histogram([r.get("text_area") for r in rows], "burned-in text (kept)", "text_area", lines))
    if any(r["aesthetic"] is not None for r in rows):
        lines = [(cfg.aesthetic.min_score, "aesthetic.min_score")] if cfg.aesthetic.min_score is not None else []
        plots.append(_histogram([r["aesthetic"] for r in rows], "aesthetic (kept)", "score", lines))
    if rows:
        plots.append(_histogram([len(r["subjects"]) for r in rows], "subjects per clip (kept)", "subjects", integer=True))
    return "<h2>Histograms</h2><div class='row'>" + "".join(plots) + "</div>" if plots else ""


def _stage_section(cfg: JobConfig, stage_counts: dict, seconds: float) -> str:
    order = [cls.name for cls in pipeline(cfg)]
    names = sorted(stage_counts, key=lambda n: order.index(n) if n in order else len(order))
    total_busy = sum(c[3] for c in stage_counts.values()) or 1e-9
    rows = []
    for n in names:
        rows_in, rows_out, errs, busy = stage_counts[n]
        per_worker = f"{rows_in / busy:.2f}" if busy > 1e-3 else "-"
        rows.append([_e(n), int(rows_in), int(rows_out), int(errs), f"{busy:.1f}", f"{busy / total_busy:.0%}",
                     per_worker, f"{rows_in / max(seconds, 1e-9):.2f}"])
    note = ("<p>Rows in: sources for scenes, clips after. Busy: seconds inside the stage, summed over its "
            f"workers. The job ran {seconds:.1f} s.</p>")
    return "<h2>Stages (this run)</h2>" + note + _table(
        ["stage", "rows in", "rows out", "errors", "busy s", "share of busy", "rows/s per busy worker", "rows/s (job)"], rows)


def _error_section(errors: list[dict]) -> str:
    if not errors:
        return "<h2>Errors</h2><p>none</p>"
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in errors:
        groups[(e["stage"], e["error_type"])].append(e)
    rows = []
    for (stage, kind), es in sorted(groups.items(), key=lambda g: -len(g[1])):
        clips = [e["clip_id"] or f"(source) {_name(e['uri'])}" for e in es]
        messages = list(dict.fromkeys(e["message"] for e in es))[:3]
        rows.append([_e(stage), _e(kind), len(es), "<br>".join(_e(c) for c in clips[:8]) + (" ..." if len(clips) > 8 else ""),
                     "<br>".join(_e(m[:300]) for m in messages)])
    return "<h2>Errors</h2>" + _table(["stage", "type", "count", "clip ids (first 8)", "first messages"], rows)


def _crop(png: bytes, text: str) -> str:
    crop = Image.open(io.BytesIO(png))
    return f"<div class='crop'>{_img(_encode(_fit(crop, 110, 80), 'PNG'), cls='alpha')}<br>{_e(text)}</div>"


def _sample_card(clip_id: str, frames: list[Image.Image], members: dict[str, bytes], row: dict | None) -> str:
    """The clip's frames, scores and caption; each subject's keyframe crop followed by its references."""
    thumbs = "".join(_jpeg(f, 148, 90) for f in frames)
    if row is None:
        return f"<div class='card'><b>{_e(clip_id)}</b><div>{thumbs}</div></div>"
    scores = ", ".join(f"{k} {row[k]:.3g}" for k in ("motion", "blank_frac", "luma", "contrast", "aesthetic") if row[k] is not None)
    crops = []
    tracks = row.get("subject_tracks") or []
    for k, s in enumerate(row["subjects"] or []):
        if C.subject_member(k) in members:
            crops.append(_crop(members[C.subject_member(k)], f"{s['label']} {s['score']:.2f} (frame {s['frame']})"))
        for ref in tracks[k]["references"] if k < len(tracks) else []:
            if ref["member"] in members:
                where = "in window" if ref["in_window"] else "outside window"
                crops.append(_crop(members[ref["member"]], f"ref: frame {ref['frame']}, {where}, q {ref['quality']:.2f}"))
    return (f"<div class='card'><b>{_e(clip_id)}</b><br><span class='dim'>{_e(_name(row['source_uri']))} "
            f"{row['start_s']:.2f}-{row['end_s']:.2f} s, {row['end_s'] - row['start_s']:.2f} s, {row['width']}x{row['height']}, "
            f"{row['num_frames']} frames</span><div>{thumbs}</div><div>{_e(scores)}</div>"
            f"<div class='caption'>{_e(row['caption'] or '(no caption)')}</div><div class='row'>{''.join(crops)}</div></div>")


def _subject_section(grounding: dict, refs: dict) -> str:
    """Whether each label the captions name was found (grounded), and where the subjects' references come from."""
    if not grounding:
        return ""
    other = (f"{refs['with_other_clips']} with crops from other clips of their source ({refs['identities_across_clips']} "
             f"identities seen in more than one clip)" if refs["identity_record"] else
             "no identity record yet (python -m curation identities)")
    rows = [[_e(label), g["named"], f"{g['grounded_share']:.0%}",
             _e(", ".join(f"{k} {n}" for k, n in g["status"].items() if k != "grounded") or "-"),
             _e("; ".join(f"{k}: {', '.join(ids)}" for k, ids in g["examples"].items()))]
            for label, g in list(grounding.items())[:30]]
    return (f"<h2>Subjects</h2><p>{refs['subjects']} subjects kept; {refs['with_other_frames']} with reference crops "
            f"from other frames ({refs['references']} crops, {refs['outside_window']} outside the training window); "
            f"{_e(other)}.</p><h3>Caption labels: grounded or not</h3>"
            + _table(["label", "clips naming it", "grounded", "otherwise", "examples (clip ids)"], rows))


def near_duplicate_section(storage: Storage, output: str, rows: list[dict], nd: dict | None, groups: int,
                           link: bool = True) -> str:
    """Counts from ``nd`` (``inspection.near_duplicate_stats``) and the largest ``groups`` groups: the kept clip
    first, then up to 3 removed ones, each with its middle frame and its similarity to its nearest clip;
    ``link``: to the dedup job's page of more groups."""
    if nd is None:
        return ("<h2>Near duplicates</h2><p>No dedup record yet: <code>python -m curation dedup OUTPUT</code> finds "
                "them and training then leaves them out.</p>")
    head = (f"<h2>Near duplicates</h2><p>{nd['removed']} clips removed in {nd['groups']} groups; training keeps "
            f"{nd['clips_kept']} clips, {nd['hours_kept']:.3f} h (<code>{C.DEDUP_DIR}/{C.DEDUP_FILE}</code>"
            + (f"; <a href='{C.DEDUP_DIR}/{DEDUP_PAGE}'>more groups</a>" if link else "") + ").</p>")
    if nd["not_in_record"]:
        head += f"<p><b>{nd['not_in_record']} clips were committed after the record was made: run dedup again.</b></p>"
    record = C.read_dedup(storage, output).to_pylist()
    by_id = {r["clip_id"]: r for r in rows}
    members: dict[str, list[dict]] = defaultdict(list)
    for r in record:
        if r["group"] is not None and r["group"] in by_id and r["clip_id"] in by_id:
            members[r["group"]].append(r)
    largest = sorted(members.items(), key=lambda g: (-len(g[1]), g[0]))[:groups]
    table = []
    for kept, rs in largest:
        shown = sorted(rs, key=lambda r: (not r["kept"], r["clip_id"]))[:4]
        cells = []
        for r in shown:
            m = clip_members(output, storage, by_id[r["clip_id"]])
            frame = clip_frames(m[C.MP4], 1) if C.MP4 in m else []
            sims = ", ".join(f"{k} {r[f'{k}_similarity']:.3f}" for k in ("fingerprint", "embedding")
                             if r[f"{k}_similarity"] is not None)
            row = by_id[r["clip_id"]]
            cells.append(f"<div class='ex'>{_jpeg(frame[0], 160, 90) if frame else ''}<br>"
                         f"{'<b>kept</b>' if r['kept'] else 'removed'} {_e(_name(row['source_uri']))} "
                         f"{row['start_s']:.2f}-{row['end_s']:.2f} s {row['width']}x{row['height']}<br>{_e(sims)}</div>")
        table.append([len(rs), "".join(cells)])
    return head + (_table(["clips", "kept first, then removed (similarity to the nearest clip)"], table) if table else "")


def write_dedup_page(storage: Storage, output: str, groups: int = 24) -> str:
    """The dedup job's page (``DEDUP_DIR``/``DEDUP_PAGE``) and the dataset card, with what the record removes."""
    rows = C.read_manifest(storage, output).to_pylist()
    ds = dataset_stats(output, storage, rows)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Near duplicates</title>{_STYLE}</head><body>"
            f"<p class='dim'>{_e(output)}</p>"
            + near_duplicate_section(storage, output, rows, ds["near_duplicates"], groups, link=False)
            + "</body></html>")
    write_card(output, storage, ds)
    uri = storage.join(output, C.DEDUP_DIR, DEDUP_PAGE)
    storage.write_atomic(uri, page.encode())
    return uri


_STYLE = """<style>
body{font:14px system-ui,sans-serif;margin:20px;color:#222} table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left} th{background:#f2f2f2}
.row{display:flex;flex-wrap:wrap;gap:8px} .card{border:1px solid #ccc;border-radius:6px;padding:8px;width:620px}
.card img{margin:2px} .dim{color:#666} .caption{margin:4px 0;font-style:italic} .crop{text-align:center;font-size:12px}
.ex{display:inline-block;margin:2px 6px;font-size:12px;vertical-align:top}
img.alpha{background-color:#fff;background-size:12px 12px;background-position:0 0,0 6px,6px -6px,-6px 0;
background-image:linear-gradient(45deg,#bbb 25%,transparent 25%),linear-gradient(-45deg,#bbb 25%,transparent 25%),
linear-gradient(45deg,transparent 75%,#bbb 75%),linear-gradient(-45deg,transparent 75%,#bbb 75%)}
</style>"""


def report_outdated(storage: Storage, output: str) -> bool:
    """Whether report.html is missing or older than the newest manifest part (its writing failed after a commit)
    or the dedup record."""
    report = storage.modified(output).get(storage.join(output, C.REPORT_FILE))
    parts = [*storage.modified(storage.join(output, C.MANIFEST_DIR), ".parquet").values(),
             *storage.modified(storage.join(output, C.DEDUP_DIR), C.DEDUP_FILE).values()]
    return report is None or report < max(parts, default=0.0)


def write_report(cfg: JobConfig, storage: Storage, stats: RunStats, summary: str, stage_counts: dict, seconds: float) -> str:
    """report.html over the whole dataset (manifest, errors, done markers) and this run's statistics (filters,
    stages, sample clips); also contact_sheet.png of the sample clips and the dataset card, README.md."""
    output = cfg.output
    rows = C.read_manifest(storage, output).to_pylist()
    errors = C.read_errors(storage, output).to_pylist()
    ds = dataset_stats(output, storage, rows)
    src = ds["sources"]
    parts = [f"<h1>Curation report</h1><p class='dim'>{_e(output)}</p><pre>{_e(summary)}</pre>",
             f"<h2>Dataset</h2><p>{ds['clips']} clips, {ds['hours']:.3f} h, {ds['shards']} shards, {ds['captioned']} "
             f"captioned; sources: {src['done']} done ({src['with_clips']} with clips), {src['failed']} failed; "
             f"{len(errors)} error rows</p>"]
    if src["without_clips"]:
        parts.append("<h3>Sources that kept no clip</h3>" + _table(
            ["source", "candidate clips", "why"],
            [[_e(w["uri"]), w["candidate_clips"], _e(w["reason"])] for w in src["without_clips"]]))
    several = sorted({(r["source_uri"], r["stream_index"], r["video_streams"]) for r in rows
                      if (r["video_streams"] or 1) > 1})
    if several:
        parts.append("<h3>Sources with several video streams</h3><p>Each was read by the stream a player shows "
                     "(never cover art; a moving stream before a still; the default one; the longest).</p>" + _table(
                         ["source", "stream read", "video streams"], [[_e(u), i, n] for u, i, n in several]))
    parts += [_filter_section(cfg, storage, stats), _histograms(cfg, stats, rows),
              near_duplicate_section(storage, output, rows, ds["near_duplicates"], 4),
              _subject_section(ds["grounding"], ds["references"]),
              _stage_section(cfg, stage_counts, seconds), _error_section(errors)]
    # This run's first clips; a run that wrote none (a rerun rebuilding the report) shows the dataset's first.
    samples = stats.samples or [(r["clip_id"], r["shard"]) for r in rows[: cfg.report.sample_clips]]
    if samples:
        by_id = {r["clip_id"]: r for r in rows}
        members = [(clip_id, clip_members(output, storage, {"clip_id": clip_id, "shard": shard}))
                   for clip_id, shard in samples]  # a dozen clips read back from their shards
        frames = [(clip_id, clip_frames(m[C.MP4], 4), m) for clip_id, m in members]
        cards = "".join(_sample_card(clip_id, fr, m, by_id.get(clip_id)) for clip_id, fr, m in frames)
        whose = "this run" if stats.samples else "the dataset"
        parts.append(f"<h2>Sample clips ({whose}, {len(frames)})</h2><div class='row'>{cards}</div>")
        sheet = contact_sheet([(clip_id, fr) for clip_id, fr, _ in frames])
        storage.write_atomic(storage.join(output, "contact_sheet.png"), _encode(sheet, "PNG"))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Curation report</title>{_STYLE}</head><body>"
            + "\n".join(parts) + "</body></html>")
    write_card(output, storage, ds)
    uri = storage.join(output, C.REPORT_FILE)
    storage.write_atomic(uri, page.encode())  # last: a report older than the manifest is rebuilt by the rerun
    return uri

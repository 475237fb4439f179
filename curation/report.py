"""The run summary (printed) and report.html with histograms and a contact sheet of sample clips."""

from __future__ import annotations

import base64
import html
import io

import av
import numpy as np
from PIL import Image, ImageDraw

from . import contract as C
from .storage import Storage
from .writer import RunStats, read_parquet_dir


def summary_text(stats: RunStats, seconds: float, sources_total: int, sources_skipped: int, cpus: int) -> str:
    s = stats
    lines = [
        f"sources: {sources_total} found, {sources_skipped} skipped (done before), {s.sources_done} done, {s.sources_failed} failed",
        f"clips: {s.clips_written} written in {s.shards_written} shard(s), {s.clips_duplicate} already present, "
        f"dropped {dict(s.dropped) or 0}",
        f"video: {s.source_seconds / 3600:.3f} h of source, {s.clip_seconds / 3600:.3f} h of clips, {s.bytes_written / 1e6:.1f} MB",
        f"errors: {dict(s.errors) or 'none'}",
        f"time: {seconds:.1f} s, {s.clips_written / max(seconds, 1e-9):.2f} clips/s, "
        f"{s.source_seconds / max(seconds, 1e-9) / max(cpus, 1):.2f} video-s/s per core ({cpus} cores)",
    ]
    return "\n".join(lines)


def _histogram_png(values: list[float], title: str, xlabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(values, bins=30, color="#3b7dd8")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def clip_frames(mp4: bytes, count: int = 3) -> list[Image.Image]:
    """``count`` frames spread evenly over a clip (first, middle, last for 3)."""
    with av.open(io.BytesIO(mp4)) as c:
        frames = [f.to_image() for f in c.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in idx]


def contact_sheet(samples: list[tuple[str, bytes]], thumb_h: int = 96, per_clip: int = 3) -> Image.Image:
    """One row per clip: its id, then ``per_clip`` frames."""
    rows = []
    for clip_id, mp4 in samples:
        frames = [f.resize((max(1, round(f.width * thumb_h / f.height)), thumb_h)) for f in clip_frames(mp4, per_clip)]
        rows.append((clip_id, frames))
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


def _img(data: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def write_report(output: str, storage: Storage, stats: RunStats, summary: str) -> str:
    """report.html over the whole dataset (manifest + errors) and this run's filter statistics."""
    manifest = read_parquet_dir(storage, storage.join(output, C.MANIFEST_DIR), C.MANIFEST_SCHEMA)
    errors = read_parquet_dir(storage, storage.join(output, C.ERRORS_DIR), C.ERRORS_SCHEMA)
    lengths = [e - s for s, e in zip(manifest.column("start_s").to_pylist(), manifest.column("end_s").to_pylist())]
    parts = [f"<h1>Curation report</h1><pre>{html.escape(summary)}</pre>"]
    parts.append(f"<h2>Dataset</h2><p>{manifest.num_rows} clips, {sum(lengths) / 3600:.3f} h, "
                 f"{len(set(manifest.column('shard').to_pylist()))} shards, {errors.num_rows} error rows</p>")
    candidates = len(stats.motion_all)
    if candidates:
        rates = {k: f"{v / candidates:.1%}" for k, v in stats.dropped.items()}
        parts.append(f"<h2>Filters (this run)</h2><p>{candidates} candidate clips; dropped by filter: {rates or 'none'}</p>")
    if lengths:
        parts.append(_img(_histogram_png(lengths, "clip length", "seconds")))
        parts.append(_img(_histogram_png(manifest.column("motion").to_pylist(), "motion (kept clips)", "mean frame difference")))
    if stats.motion_all:
        parts.append(_img(_histogram_png(stats.motion_all, "motion (all candidates, this run)", "mean frame difference")))
    if errors.num_rows:
        rows = "".join(
            f"<tr><td>{html.escape(r['uri'])}</td><td>{r['stage']}</td><td>{r['error_type']}</td><td>{html.escape(r['message'])}</td></tr>"
            for r in errors.slice(0, 200).to_pylist()
        )
        parts.append(f"<h2>Errors</h2><table border=1><tr><th>uri</th><th>stage</th><th>type</th><th>message</th></tr>{rows}</table>")
    if stats.samples:
        buf = io.BytesIO()
        contact_sheet(stats.samples).save(buf, format="PNG")
        sheet = buf.getvalue()
        storage.write_atomic(storage.join(output, "contact_sheet.png"), sheet)
        parts.append("<h2>Sample clips</h2>" + _img(sheet))
    page = "<html><head><meta charset='utf-8'><title>Curation report</title></head><body>" + "\n".join(parts) + "</body></html>"
    uri = storage.join(output, C.REPORT_FILE)
    storage.write_atomic(uri, page.encode())
    return uri

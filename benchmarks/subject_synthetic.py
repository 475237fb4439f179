"""Synthetic clips with ground truth for the subjects stage: tracking, reference choice and identities across clips.

A clip is a textured background panning under a few labelled objects ("actors": an ellipse "dog" with stripes, a
disc "ball" with dots, a box "car" with checks...), each on a scripted path of position and scale, drawn back to
front, optionally blurred in some frames. Every object is drawn whole before it is pasted into the frame, so its
whole mask is known also where the frame cuts it or another object hides it: per frame and object the ground truth
keeps the visible mask, the truncated share (of the whole object, outside the frame), the occluded share (of its
in-frame part, under objects in front) and whether it is blurred.

``Oracle`` answers the subjects stage's ``detect`` and ``segment`` from that ground truth (a box at score 0.9 per
visible object of a requested label; the visible mask of the object whose box it is), recognising the frame by the
identity of the array ``clip_subjects`` hands it. ``describe`` is the embedding: a deterministic, non-learned colour
(hue x saturation) and gradient-orientation histogram of the crop, ignoring the mid-gray (127) ``clip_subjects``
fills outside the mask. It stands in for the identity CLIP, whose tiny test version has random weights: identity
numbers measured with it say how the matching logic behaves on a descriptor that separates these shapes, not how a
real CLIP does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import cv2
import numpy as np

from common.contract import png_members, window_frames
from curation.config import SubjectsConfig
from curation.models.masks import bbox
from curation.models.references import ClipSubjects, clip_subjects, track_frames
from curation.models.subjects import Detection

W, H = 320, 180
SCORE = 0.9


@dataclass(frozen=True)
class Look:
    """What an object looks like at scale 1."""

    label: str
    shape: str  # ellipse | disc | box
    size: tuple[int, int]  # width, height
    body: tuple[int, int, int]  # RGB
    mark: tuple[int, int, int]
    pattern: str  # stripes | dots | checks
    period: int = 12


@dataclass(frozen=True)
class Actor:
    """One object of a clip. ``name`` is its ground-truth identity: the same name in two clips is the same object."""

    name: str
    look: Look
    path: tuple[tuple[float, float, float, float], ...]  # (frame, centre x, centre y, scale), linear in between
    z: int = 0  # drawn over the actors of lower z
    blur: frozenset[int] = frozenset()  # frames in which it is blurred

    def at(self, t: int) -> tuple[float, float, float]:
        f, x, y, s = (np.array(v, dtype=float) for v in zip(*self.path))
        return float(np.interp(t, f, x)), float(np.interp(t, f, y)), float(np.interp(t, f, s))


@dataclass
class Truth:
    """One actor in one frame."""

    visible: np.ndarray  # (H, W) bool
    truncated: float  # share of the whole object outside the frame
    occluded: float  # share of its in-frame part hidden by actors in front
    blurred: bool

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.visible))

    @property
    def clean(self) -> bool:
        return self.area > 0 and self.truncated <= 0.01 and self.occluded <= 0.01 and not self.blurred


@dataclass
class Clip:
    name: str
    fps: float
    actors: tuple[Actor, ...]
    labels: list[str]  # what the caption names: an actor whose label is not here is never detected
    frames: list[np.ndarray] = field(default_factory=list, repr=False)  # RGB
    truth: dict[str, list[Truth]] = field(default_factory=dict, repr=False)  # actor name -> per frame

    @property
    def window_end(self) -> int:
        return window_frames(self.fps, len(self.frames))

    @property
    def keyframe(self) -> int:
        return self.window_end // 2

    def looked_at(self, count: int) -> dict[int, np.ndarray]:
        """The frames the subjects stage looks at with ``subjects.track_frames=count`` (the arrays themselves)."""
        return {i: self.frames[i] for i in track_frames(len(self.frames), self.keyframe, count)}

    def object_of(self, subject: dict) -> str | None:
        """The actor a subject record (``contract.SUBJECT``) shows: the one under most of its mask, if over half."""
        mask = rle_mask(subject["mask_rle"])
        best, name = 0.5 * mask.sum(), None
        for a in self.actors:
            on = np.count_nonzero(mask & self.truth[a.name][subject["frame"]].visible)
            if on > best:
                best, name = on, a.name
        return name

    def object_at(self, label: str, frame: int, box) -> str | None:
        """The actor of ``label`` whose visible box overlaps ``box`` (a track point's) most in ``frame``, if the
        IoU is over 0.3 (the cleaned mask of a heavily occluded object can lose pieces)."""
        best, name = 0.3, None
        for a in self.actors:
            t = self.truth[a.name][frame]
            if a.look.label == label and t.area:
                overlap = box_iou(bbox(t.visible), box)
                if overlap > best:
                    best, name = overlap, a.name
        return name


def rle_mask(rle: str) -> np.ndarray:
    """The mask of a manifest RLE (``curation.models.masks.rle_encode``: column-major runs, zeros first)."""
    data = json.loads(rle)
    h, w = data["size"]
    runs = np.asarray(data["counts"], dtype=np.int64)
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape((h, w), order="F")


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union else 0.0


# -- drawing ------------------------------------------------------------------------------------------------------
def sprite(look: Look) -> tuple[np.ndarray, np.ndarray]:
    """The look's RGB texture over its whole rectangle (so that resampling its edge blends no black in) and its
    alpha (float 0..1)."""
    w, h = look.size
    yy, xx = np.mgrid[0:h, 0:w]
    p = look.period
    if look.pattern == "stripes":
        marked = ((xx + yy // 2) // (p // 2)) % 2 == 1
    elif look.pattern == "dots":
        marked = ((xx % p - p / 2) ** 2 + (yy % p - p / 2) ** 2) < (p / 3.5) ** 2
    else:
        marked = ((xx // p) + (yy // p)) % 2 == 1
    rgb = np.where(marked[..., None], np.array(look.mark, np.float32), np.array(look.body, np.float32))
    rgb = rgb * (0.8 + 0.25 * yy / h)[..., None]  # shading: the object is not flat
    alpha = np.zeros((h, w), np.uint8)
    if look.shape == "box":
        alpha[:] = 1
    elif look.shape == "disc":
        cv2.circle(alpha, (w // 2, h // 2), min(w, h) // 2 - 1, 1, -1)
    else:
        cv2.ellipse(alpha, (w // 2, h // 2), (w // 2 - 1, h // 2 - 1), 0, 0, 360, 1, -1)
    return np.clip(rgb, 0, 255).astype(np.uint8), alpha.astype(np.float32)


def background(rng: np.random.Generator, frames: int, pan: float) -> np.ndarray:
    """A smooth random texture with a wave pattern, wide enough to pan ``pan`` pixels a frame."""
    width = W + int(abs(pan) * frames) + 2
    noise = rng.normal(0, 1, (H // 12 + 2, width // 12 + 2, 3)).astype(np.float32)
    smooth = cv2.resize(noise, (width, H), interpolation=cv2.INTER_CUBIC)
    xx = np.arange(width, dtype=np.float32)
    wave = 12 * np.sin(xx / 7.0)[None, :, None]
    base = np.array(rng.uniform(60, 190, 3), np.float32)
    return np.clip(base + 28 * smooth + wave, 0, 255).astype(np.uint8)


def place(rgb: np.ndarray, alpha: np.ndarray, cx: float, cy: float, s: float
          ) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The sprite scaled by ``s`` and centred at (cx, cy): the frame position (x, y) of its top-left pixel, its colour
    and its whole mask (also the part outside the frame)."""
    h, w = alpha.shape
    x, y = int(np.floor(cx - s * w / 2)), int(np.floor(cy - s * h / 2))
    m = np.float32([[s, 0, cx - s * w / 2 - x], [0, s, cy - s * h / 2 - y]])
    size = (int(np.ceil(s * w)) + 2, int(np.ceil(s * h)) + 2)
    mask = cv2.warpAffine(alpha, m, size, flags=cv2.INTER_LINEAR) > 0.5
    # Nearest: a sub-pixel shift would otherwise soften the texture by a varying amount, a blur the truth misses.
    colour = cv2.warpAffine(rgb, m, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    return x, y, colour, mask


def render(clip: Clip, num_frames: int, seed: int, pan: float = 1.5, gain: float = 1.0) -> Clip:
    """Draws ``clip``'s frames and ground truth (in place; returns it). ``gain`` scales every pixel: the exposure of
    this clip."""
    rng = np.random.default_rng(seed)
    bg = background(rng, num_frames, pan)
    sprites = {a.name: sprite(a.look) for a in clip.actors}
    order = sorted(clip.actors, key=lambda a: a.z)
    clip.frames, clip.truth = [], {a.name: [] for a in clip.actors}
    for t in range(num_frames):
        x0 = int(round(abs(pan) * t)) if pan >= 0 else bg.shape[1] - W - int(round(-pan * t))
        frame = bg[:, x0 : x0 + W].copy()
        whole, inside = {}, {}
        for a in order:
            x, y, colour, mask = place(*sprites[a.name], *a.at(t))
            whole[a.name] = int(mask.sum())
            inside[a.name] = np.zeros((H, W), bool)
            fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + mask.shape[1], W), min(y + mask.shape[0], H)
            if fx0 < fx1 and fy0 < fy1:
                part = mask[fy0 - y : fy1 - y, fx0 - x : fx1 - x]
                inside[a.name][fy0:fy1, fx0:fx1] = part
                frame[fy0:fy1, fx0:fx1][part] = colour[fy0 - y : fy1 - y, fx0 - x : fx1 - x][part]
        cover = np.zeros((H, W), bool)
        visible = {}
        for a in reversed(order):
            visible[a.name] = inside[a.name] & ~cover
            cover |= inside[a.name]
        if any(t in a.blur for a in clip.actors):
            blurred = cv2.GaussianBlur(frame, (0, 0), 3.0)
            for a in clip.actors:
                if t in a.blur:
                    frame[visible[a.name]] = blurred[visible[a.name]]
        frame = np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        clip.frames.append(frame)
        for a in clip.actors:
            n_in = int(inside[a.name].sum())
            clip.truth[a.name].append(Truth(visible[a.name], 1 - n_in / whole[a.name],
                                            1 - int(visible[a.name].sum()) / n_in if n_in else 0.0, t in a.blur))
    return clip


# -- the models, from the ground truth ------------------------------------------------------------------------------
class Oracle:
    """Ground-truth ``detect`` and ``segment`` for one clip. ``garbage``: actors whose masks come back as noise
    (a segmenter failing on them), which the mask clean-up rejects."""

    def __init__(self, clip: Clip, garbage: frozenset[str] = frozenset()):
        self.clip, self.garbage = clip, garbage

    def frame_of(self, image: np.ndarray) -> int:
        for i, f in enumerate(self.clip.frames):
            if f is image:
                return i
        raise ValueError("not a frame of this clip (the oracle recognises the arrays clip_subjects is given)")

    def _boxes(self, t: int) -> list[tuple[Actor, tuple[int, int, int, int]]]:
        return [(a, bbox(self.clip.truth[a.name][t].visible)) for a in self.clip.actors
                if self.clip.truth[a.name][t].area]

    def detect(self, image: np.ndarray, labels: list[str]) -> list[Detection]:
        return [Detection(a.look.label, SCORE, tuple(map(float, box))) for a, box in self._boxes(self.frame_of(image))
                if a.look.label in labels]

    def segment(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        t = self.frame_of(image)
        known = {box: a for a, box in self._boxes(t)}
        out = np.zeros((len(boxes), H, W), bool)
        rng = np.random.default_rng(t)
        for i, b in enumerate(boxes):
            a = known.get(tuple(int(v) for v in b))
            if a is None:
                continue
            if a.name in self.garbage:
                x0, y0, x1, y1 = map(int, b)
                out[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.3
            else:
                out[i] = self.clip.truth[a.name][t].visible
        return out


def describe(crops: list[np.ndarray]) -> np.ndarray:
    """(N, 56) L2-normalised descriptors: a 12 hue x 4 saturation histogram and an 8-bin gradient-orientation
    histogram (magnitude-weighted, half the weight) of the pixels that are not the mid-gray fill, square-rooted
    (Hellinger), so that cosines compare distributions. Not learned: a stand-in for the identity CLIP."""
    out = []
    for crop in crops:
        keep = ~(crop == 127).all(-1)
        hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)
        colour = cv2.calcHist([hsv], [0, 1], keep.astype(np.uint8), [12, 4], [0, 180, 0, 256]).ravel()
        gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
        gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
        inner = cv2.erode(keep.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # not the cut-out edge
        angle = (np.arctan2(gy, gx)[inner] % np.pi) / np.pi * 8
        grad = np.bincount(np.minimum(angle.astype(int), 7), weights=np.hypot(gx, gy)[inner], minlength=8)
        v = np.concatenate([colour / max(colour.sum(), 1), 0.5 * grad / max(grad.sum(), 1e-6)])
        v = np.sqrt(v)
        out.append(v / (np.linalg.norm(v) or 1.0))
    return np.array(out, np.float32)


def find(clip: Clip, cfg: SubjectsConfig, frames: dict[int, np.ndarray] | None = None,
         oracle: Oracle | None = None) -> ClipSubjects:
    """``clip_subjects`` on ``clip`` (default: the frames the stage looks at) with the oracle and ``describe``."""
    oracle = oracle or Oracle(clip)
    frames = clip.looked_at(cfg.track_frames) if frames is None else frames
    return clip_subjects(frames, clip.labels, clip.keyframe, clip.window_end, oracle.detect, oracle.segment,
                         describe, cfg)


def manifest_row(clip_id: str, found: ClipSubjects, shard: str = "part-000000") -> dict:
    """The manifest columns ``curation.identities`` reads, with member offsets as a shard would lay them out
    (one 512-byte header per member, data padded to 512)."""
    names = png_members({"subjects": found.subjects, "subject_tracks": found.tracks})
    offsets, at = [], 3 * 512  # after the mp4 and json members' headers, roughly: only consistency matters here
    for name, png in zip(names, found.pngs):
        offsets.append({"member": name, "offset": at, "size": len(png)})
        at += -(-len(png) // 512) * 512 + 512
    return {"clip_id": clip_id, "shard": shard, "subjects": found.subjects, "subject_tracks": found.tracks,
            "member_offsets": offsets}


# -- looks and scripted clips ---------------------------------------------------------------------------------------
DOG = Look("dog", "ellipse", (90, 56), (150, 90, 40), (60, 35, 20), "stripes")
BALL = Look("ball", "disc", (44, 44), (210, 40, 40), (250, 230, 60), "dots", period=11)
CAR = Look("car", "box", (120, 70), (40, 80, 200), (230, 230, 240), "checks", period=14)
POLE = Look("pole", "box", (26, 200), (90, 90, 60), (50, 50, 40), "stripes", period=10)
N = 60  # frames of the scripted clips: at 8 fps the training window is frames 0-48, the keyframe 24


def walk_clip() -> Clip:
    """A dog crossing the frame left to right while shrinking to half its size; a ball rolling the other way."""
    dog = Actor("dog", DOG, ((0, 70, 90, 1.3), (N - 1, 250, 80, 0.65)))
    ball = Actor("ball", BALL, ((0, 260, 130, 1.0), (N // 2, 250, 110, 1.0), (N - 1, 80, 130, 1.0)))
    return render(Clip("walk", 8.0, (dog, ball), ["dog", "ball"]), N, seed=1)


def exit_clip() -> Clip:
    """A dog standing still for 30 frames, then walking out of the right edge (wholly out by frame 52); a ball."""
    dog = Actor("dog", DOG, ((0, 160, 90, 1.0), (30, 160, 90, 1.0), (52, 378, 90, 1.0), (N - 1, 440, 90, 1.0)))
    ball = Actor("ball", BALL, ((0, 50, 140, 1.0), (N - 1, 60, 140, 1.0)))
    return render(Clip("exit", 8.0, (dog, ball), ["dog", "ball"]), N, seed=2)


def occlusion_clip(occluder: Look = CAR) -> Clip:
    """A dog standing still; ``occluder`` (labelled: a subject too) crossing in front of it from beyond the left
    edge to beyond the right one, over the dog's centre at frame 22 (the car then hides it wholly, the pole a strip
    through its middle)."""
    dog = Actor("dog", DOG, ((0, 160, 95, 1.0), (N - 1, 165, 95, 1.0)))
    over = Actor(occluder.label, occluder, ((0, -100, 95, 1.0), (22, 160, 95, 1.0), (44, 420, 95, 1.0)), z=1)
    return render(Clip(f"occlusion_{occluder.label}", 8.0, (dog, over), ["dog", occluder.label]), N, seed=3)


def refs_clip() -> Clip:
    """A dog standing still, clean in every frame up to 51 and at 55; a car (labelled) sliding in from the right
    to hide its right side around frame 52 (about 60 %), then the dog walking out of the right edge (about 65 % out
    at frame 57)."""
    dog = Actor("dog", DOG, ((0, 200, 95, 1.0), (54, 200, 95, 1.0), (57, 330, 95, 1.0), (N - 1, 330, 95, 1.0)))
    car = Actor("car", CAR, ((0, 470, 95, 1.0), (49, 470, 95, 1.0), (52, 255, 95, 1.0), (55, 470, 95, 1.0)), z=1)
    return render(Clip("refs", 8.0, (dog, car), ["dog", "car"]), N, seed=4)


OTHER_DOG = Look("dog", "ellipse", (84, 60), (70, 110, 170), (230, 230, 230), "dots", period=10)


def identity_clips() -> list[Clip]:
    """Three clips of one source, each with another exposure: the ball in each (other places and sizes), the dog in
    the first two, another dog (same label, another look) in the first and the last. Between the last two clips the
    assignment pairs the two dogs: only the similarity threshold keeps them apart."""
    scripts = [(1.0, {"dog": ((0, 80, 80, 1.0), (N - 1, 120, 90, 1.0)),
                      "other_dog": ((0, 250, 60, 1.0), (N - 1, 260, 70, 1.0))}),
               (0.9, {"dog": ((0, 250, 70, 0.7), (N - 1, 200, 80, 0.75))}),
               (1.1, {"other_dog": ((0, 100, 60, 1.2), (N - 1, 110, 70, 1.1))})]
    looks = {"dog": DOG, "other_dog": OTHER_DOG}
    out = []
    for c, (gain, dogs) in enumerate(scripts):
        ball = Actor("ball", BALL, ((0, 40 + 100 * c, 140, 0.8 + 0.2 * c), (N - 1, 60 + 100 * c, 135, 0.8 + 0.2 * c)))
        actors = (ball, *(Actor(name, looks[name], path, z=1) for name, path in dogs.items()))
        out.append(render(Clip(f"id{c}", 8.0, actors, ["dog", "ball"]), N, seed=20 + c, gain=gain))
    return out


# -- random clips for the benchmark ---------------------------------------------------------------------------------
def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour: never the mid-gray that ``clip_subjects`` fills around a crop."""
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(120, 255), rng.uniform(110, 240)]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def random_look(rng: np.random.Generator, label: str, shape: str, size: tuple[int, int]) -> Look:
    pattern = str(rng.choice(["stripes", "dots", "checks"]))
    return Look(label, shape, size, _colour(rng), _colour(rng), pattern, int(rng.integers(9, 16)))


def random_clip(seed: int) -> Clip:
    """A dog on a random path and scale change, maybe leaving or entering the frame, maybe blurred for a few frames,
    maybe crossed by a car in front (labelled) or a pole (unlabelled: what a caption does not name hides it too);
    a ball wandering behind."""
    rng = np.random.default_rng(seed)
    fps = float(rng.choice([8, 12, 24]))
    n = int(rng.integers(60, 97))
    x0, x1 = rng.uniform(60, 260, 2)
    y0, y1 = rng.uniform(60, 120, 2)
    s0, s1 = rng.uniform(0.6, 1.4, 2)
    event = rng.choice(["none", "exit", "enter"], p=[0.4, 0.4, 0.2])
    path = [(0, x0, y0, s0), (n - 1, x1, y1, s1)]
    if event == "exit":  # out of the left or right edge over the last part of the clip
        at = int(rng.integers(n // 2, n - 12))
        edge = 430 if x1 > W / 2 else -110
        path = [(0, x0, y0, s0), (at, x1, y1, s1), (n - 1, edge, y1, s1)]
    elif event == "enter":
        at = int(rng.integers(12, n // 2))
        edge = 430 if x0 > W / 2 else -110
        path = [(0, edge, y0, s0), (at, x0, y0, s0), (n - 1, x1, y1, s1)]
    blur = frozenset()
    if rng.random() < 0.5:
        start = int(rng.integers(0, n - 8))
        blur = frozenset(range(start, start + int(rng.integers(4, 9))))
    dog = Actor("dog", random_look(rng, "dog", "ellipse", (90, 56)), tuple(path), z=1, blur=blur)
    ball = Actor("ball", random_look(rng, "ball", "disc", (44, 44)),
                 ((0, *rng.uniform([30, 40], [290, 150]), 1.0), (n - 1, *rng.uniform([30, 40], [290, 150]), 1.0)))
    actors, labels = [dog, ball], ["dog", "ball"]
    crossing = rng.choice(["none", "car", "pole"], p=[0.4, 0.4, 0.2])
    if crossing != "none":  # from beyond one edge to beyond the other, over the dog's place at frame tm
        tm = int(rng.integers(10, n - 10))
        cx, cy, _ = dog.at(tm)
        cx, speed = min(max(cx, 0), W), rng.uniform(6, 12)
        size = (120, 70) if rng.random() < 0.5 else (150, 50)  # 3:1: the border cuts its short side
        look = random_look(rng, "car", "box", size) if crossing == "car" else POLE
        y = cy if crossing == "car" else H / 2
        path = ((tm - (cx + 90) / speed, -90, y, 1.0), (tm, cx, y, 1.0), (tm + (W + 90 - cx) / speed, W + 90, y, 1.0))
        actors.append(Actor(str(crossing), look, path, z=2))
        labels += ["car"] if crossing == "car" else []
    return render(Clip(f"random_{seed}", fps, tuple(actors), labels), n, seed=seed, pan=float(rng.uniform(-2, 2)))


def source_clips(seed: int, clips: int = 4) -> list[Clip]:
    """The clips of one source: a dog and a ball that recur in every clip (other paths, scales, exposure) and a
    distractor dog (same label, another look: half the time the same body colour with other marks, else all
    random) in about half of them."""
    rng = np.random.default_rng(10_000 + seed)
    dog = random_look(rng, "dog", "ellipse", (90, 56))
    ball = random_look(rng, "ball", "disc", (44, 44))
    if rng.random() < 0.5:
        other = "stripes" if dog.pattern != "stripes" else "dots"
        distractor = Look("dog", "ellipse", (84, 60), dog.body, _colour(rng), other, dog.period)
    else:
        distractor = random_look(rng, "dog", "ellipse", (84, 60))
    out = []
    for c in range(clips):
        actors = []
        for name, look in (("dog", dog), ("ball", ball), ("other_dog", distractor)):
            if name == "other_dog" and rng.random() < 0.5:
                continue
            (xa, xb), (ya, yb), s = rng.uniform(50, 270, 2), rng.uniform(50, 130, 2), rng.uniform(0.7, 1.3)
            actors.append(Actor(name, look, ((0, xa, ya, s), (N - 1, xb, yb, s * rng.uniform(0.8, 1.25))),
                                z=len(actors)))
        clip = Clip(f"source{seed}_clip{c}", 8.0, tuple(actors), ["dog", "ball"])
        pan, gain = rng.uniform(-2, 2), rng.uniform(0.85, 1.15)
        out.append(render(clip, N, seed=100 * seed + c, pan=float(pan), gain=float(gain)))
    return out

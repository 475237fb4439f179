"""Shot boundaries and clean clips: TransNetV2 on real videos with its packaged weights, streaming in bounded
memory, blank and fade trimming on synthetic scores, a synthetic video and real ones."""

import random
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from common.storage import Storage
from curation.config import DetectorConfig, ScenesConfig, TrimConfig
from curation.tools.clean_clips import evaluate, packaged_places, read_labels
from curation.video.analysis import analyse
from curation.video.decode import open_source
from curation.video.detectors import Detectors
from curation.video.planning import Planned, Scores, clip_limits, plan_scene
from curation.video.shots import Break
from curation.video.transnet import (CONTEXT, SIZE, STRIDE, WINDOW, TransNetV2Detector, TransNetV2Model, network,
                                     packaged_weights)

from .conftest import ROOT, VIDEOS
from .pipeline_helpers import run_cpu_stages

TRIM = TrimConfig()


@pytest.fixture(scope="module")
def model() -> TransNetV2Model:
    return TransNetV2Model.load({}, "cpu")


def small_frames(path, start=0, end=None) -> list[np.ndarray]:
    """The analysis pass's frames (BGR at width 256) of [start, end)."""
    import cv2

    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if end is not None and i >= end:
                break
            if i >= start:
                bgr = f.to_ndarray(format="bgr24")
                out.append(cv2.resize(bgr, (256, round(bgr.shape[0] * 256 / bgr.shape[1] / 2) * 2), interpolation=cv2.INTER_AREA))
    return out


def stream(model, frames, gated=False, **args) -> list[Break]:
    det = TransNetV2Detector(model, args, gated)
    breaks = [b for i, f in enumerate(frames) for b in det.process(i, f)]
    return breaks + det.finish(len(frames))


def runs_above(p: np.ndarray, threshold=0.5) -> list[Break]:
    """Breaks from whole-video probabilities by the package's rule (first frame of a run stays in the shot before)."""
    out, start = [], None
    for i, above in enumerate(list(p > threshold) + [False]):
        if above and start is None:
            start = i
        elif not above and start is not None:
            out.append(Break(start + 1, i))
            start = None
    return out


class Counted:
    """The model, counting the windows it is given."""

    def __init__(self, model):
        self.model, self.windows = model, 0

    def __call__(self, windows):
        self.windows += len(windows)
        return self.model(windows)


def test_streamed_windows_give_the_package_reference_predictions(model):
    # testvideo frames [150, 420): a hard cut, black, a fade in, a fade out, black. The reference runs the whole
    # clip through the package's own predict_frames (padding, windows, middle frames) in PyTorch; the detector
    # streams it through OpenVINO.
    import cv2

    frames = small_frames(VIDEOS / "testvideo.mp4", 150, 420)
    rgb = torch.from_numpy(np.stack([cv2.cvtColor(cv2.resize(f, SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB) for f in frames]))
    with torch.inference_mode():
        single, many = network(packaged_weights()).net.predict_frames(rgb, quiet=True)
    expected = runs_above(np.maximum(single.float().numpy(), many.float().numpy()))
    assert expected and any(b.end - b.start > 10 for b in expected)  # a hard cut and gradual spans
    assert stream(model, frames) == expected
    assert stream(model, frames, windows=3) == expected  # batched windows change nothing


def test_openvino_and_torch_give_the_same_probabilities(model):
    import cv2

    frames = small_frames(VIDEOS / "testvideo.mp4", 190, 290)  # a fade in from black
    window = np.stack([cv2.cvtColor(cv2.resize(f, SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB) for f in frames])[None]
    on_torch = TransNetV2Model.load({"runtime": "torch"}, "cpu")(window)
    # A CPU with native bfloat16 runs both in bfloat16, each its own way: within 0.01 then (curation.video.transnet).
    tolerance = 1e-2 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 1e-4
    assert on_torch.max() > 0.5 and np.abs(model(window) - on_torch).max() < tolerance


def test_transnetv2_sees_the_labelled_cuts_and_transitions_of_testvideo(model):
    # labels.json, by eye: cuts at 30 and 180; fades and the dissolve [211,240) [331,360) [394,424) [529,558) [664,693).
    frames = small_frames(VIDEOS / "testvideo.mp4")
    breaks = stream(model, frames)
    cuts = [b.start for b in breaks if b.start == b.end]
    spans = [(b.start, b.end) for b in breaks if b.end > b.start]
    assert cuts == [30, 180]
    truth = [(211, 240), (331, 360), (394, 424), (529, 558), (664, 693)]
    assert len(spans) == len(truth) and all(abs(s - a) <= 3 and abs(e - b) <= 3 for (s, e), (a, b) in zip(spans, truth)), spans
    # Gated, the network runs on a third of the windows and finds the same gradual transitions, to the frame; the
    # hard cuts are left to the hard-cut detector beside it.
    counted = Counted(model)
    gated = stream(counted, frames, gated=True)
    assert [(b.start, b.end) for b in gated] == spans and counted.windows <= 5


def test_gatednetwork_runs_only_around_blends_in_bounded_memory():
    # Frames that only hold still, cut or fade: FakeNet's probability (a pixel) is high at a cut at 1,000 and over a
    # fade [5,000, 5,040). The gate leaves the cut alone and sends the fade's windows to the network.
    n, fade = 8_000, (5_000, 5_040)
    det = TransNetV2Detector(Counted(FakeNet()), {}, gated=True)
    breaks, held = [], 0
    for i in range(n):
        level = 40 if i < 1_000 else 90 + 100 * min(max(i - fade[0], 0), fade[1] - fade[0]) // (fade[1] - fade[0])
        small = np.full((54, 96, 3), level, np.uint8)
        small[:2, :2] = 0
        small[:2, :2, 2] = 255 if i == 1_000 or fade[0] + 2 <= i < fade[1] - 2 else 0
        breaks += det.process(i, small)
        held = max(held, len(det.frames))
        assert det.settled() <= i + 1
    breaks += det.finish(n)
    assert breaks == [Break(fade[0] + 3, fade[1] - 2)]
    assert det.model.windows <= 2 and held <= WINDOW + 40


def test_weights_load_from_a_path_through_the_same_code(model, tmp_path):
    from safetensors.torch import save_file

    from curation.models.runtime import load_state_dict

    path = tmp_path / "transnetv2.safetensors"
    save_file(load_state_dict(packaged_weights()), str(path))
    window = np.random.default_rng(0).integers(0, 255, (1, WINDOW, 27, 48, 3), dtype=np.uint8)
    assert np.array_equal(TransNetV2Model.load({"weights": str(path)}, "cpu")(window), model(window))
    (tmp_path / "other.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="other.safetensors"):
        TransNetV2Model.load({"weights": str(tmp_path / "other.safetensors")}, "cpu")


def test_loading_leaves_the_process_as_it_was():
    # The package's own constructor seeds every RNG and turns on deterministic algorithms process-wide.
    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    network(packaged_weights())
    assert random.random() == expected and not torch.are_deterministic_algorithms_enabled()


class FakeNet:
    """Stands in for the network: a frame's probability is read from the frame itself (its first pixel)."""

    def __call__(self, windows):
        return windows[:, CONTEXT : CONTEXT + STRIDE, 0, 0, 0].astype(np.float32) / 255.0


def test_long_video_streams_in_bounded_memory():
    n = 20_000
    transitions = [(1_000, 1_001), (5_000, 5_040), (12_345, 12_346), (19_990, n)]
    det = TransNetV2Detector(FakeNet(), {"windows": 4}, gated=False)
    frames_held, breaks = 0, []
    for i in range(n):
        small = np.zeros((54, 96, 3), np.uint8)  # an analysis frame; the detector halves it to 48x27
        small[:2, :2, 2] = 255 if any(a <= i < b for a, b in transitions) else 0  # red, top-left: FakeNet's input
        breaks += det.process(i, small)
        frames_held = max(frames_held, len(det.frames))
        assert det.settled() <= i + 1
    breaks += det.finish(n)
    assert frames_held <= WINDOW + 3 * STRIDE  # one batch of windows, whatever the length
    assert breaks == [Break(1_001, 1_001), Break(5_001, 5_040), Break(12_346, 12_346), Break(19_991, n)]


def scene_scores(luma, contrast) -> Scores:
    luma, contrast = np.asarray(luma, np.float32), np.asarray(contrast, np.float32)
    return Scores(np.ones_like(luma), luma, contrast, np.zeros_like(luma))


def test_black_white_flat_and_fading_ends_are_trimmed():
    # 10 fps, clips 1 s to 4 s. Black (3), a fade-in (4, contrast rising to 50), content (30), white (2), flat grey (2).
    luma = [2] * 3 + [30, 50, 70, 90] + [100] * 30 + [250] * 2 + [128] * 2
    contrast = [1] * 3 + [10, 20, 30, 40] + [50] * 30 + [3] * 2 + [0] * 2
    limits = clip_limits(ScenesConfig(min_clip_s=1, max_clip_s=4), 10)
    planned = plan_scene(0, len(luma), scene_scores(luma, contrast), TRIM, limits)
    assert planned == [Planned(7, 37, False)]  # the last fade frame has 0.8 of the content's contrast: < 0.85


def test_a_scene_without_content_is_one_blank_candidate_and_a_short_one_is_nothing():
    limits = clip_limits(ScenesConfig(min_clip_s=1, max_clip_s=4), 10)
    assert plan_scene(0, 30, scene_scores([1] * 30, [0] * 30), TRIM, limits) == [Planned(0, 30, True)]
    assert plan_scene(0, 8, scene_scores([1] * 8, [0] * 8), TRIM, limits) == []
    # Content shorter than the shortest clip once trimmed: blank too (nothing of it is kept).
    luma = [1] * 20 + [100] * 5
    assert plan_scene(0, 25, scene_scores(luma, [0] * 20 + [50] * 5), TRIM, limits) == [Planned(0, 25, True)]


def write_synthetic(path, fps=25):
    """Three textured shots joined by a fade through black and a dissolve, with known frames:
    A [0,50) fade-out [50,62) black [62,70) fade-in B [70,82) B [82,140) dissolve B->C [140,160) C [160,220)."""
    rng = np.random.default_rng(0)
    shots = [rng.integers(0, 255, (24, 40, 3), dtype=np.uint8) for _ in range(3)]

    def shot(k, i):  # a textured picture that moves, so motion and content are real
        import cv2

        big = cv2.resize(shots[k], (192, 112), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        return np.roll(big, 2 * i, axis=1)

    def frame(i):
        if i < 50:
            return shot(0, i)
        if i < 62:
            return shot(0, i) * (1 - (i - 49) / 13)
        if i < 70:
            return np.zeros((112, 192, 3), np.float32)
        if i < 82:
            return shot(1, i) * ((i - 69) / 13)
        if i < 140:
            return shot(1, i)
        if i < 160:
            a = (i - 139) / 21
            return shot(1, i) * (1 - a) + shot(2, i) * a
        return shot(2, i)

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt, s.options = 192, 112, "yuv420p", {"crf": "12"}
        for i in range(220):
            f = av.VideoFrame.from_ndarray(np.clip(frame(i), 0, 255).astype(np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return {"frames": 220, "black": [[62, 70]], "cuts": [], "zones": [[50, 62], [70, 82], [140, 160]]}


def curate(path, *overrides):
    """The scene pass (no encoding: these tests look at which frames the clips hold)."""
    rows = run_cpu_stages(path, "encode.hold_mb=0", *overrides, stages=("scenes",))
    assert not [r for r in rows if r.kind == "error"]
    return rows


def kept(rows):
    return [(r.meta["start_frame"], r.meta["end_frame"]) for r in rows if r.kind == "clip"]


def test_synthetic_fades_and_dissolve_stay_out_of_clips(tmp_path):
    # Its dissolve is between two shots of fine noise that both move 2 px a frame: no frame looks like a blend of
    # its neighbours at 48x27, so the gate would leave it to a network that never runs there (docs/curation.md:
    # Clean clips). The network on every window sees it.
    label = write_synthetic(tmp_path / "synthetic.mp4")
    rows = curate(tmp_path / "synthetic.mp4", "scenes.detectors=[{kind: transnetv2, args: {gate: false}}, {kind: adaptive}]")
    r = evaluate({"v": kept(rows)}, {"v": label})
    assert r["clean_rate"] == 1.0 and r["coverage"] > 0.9, r


def test_default_detectors_keep_only_clean_clips_of_real_videos():
    paths, labels = read_labels([VIDEOS / "labels.json", ROOT / "benchmarks" / "labels.json"], packaged_places())
    names = ["testvideo.mp4", "bikes.mp4"]
    clips = {n: kept(curate(paths[n])) for n in names}
    r = evaluate(clips, {n: labels[n] for n in names})
    assert r["clean_rate"] == 1.0 and r["coverage"] > 0.95, r


def test_blank_sources_and_scenes_become_dropped_rows_with_their_scores():
    # fades.mp4: flat frames fading to white and to black, no content at all. TransNetV2 sees its fades as
    # transitions and leaves only scenes too short to keep; adaptive sees one scene: all of it blank.
    assert not kept(curate(VIDEOS / "fades.mp4"))
    rows = curate(VIDEOS / "fades.mp4", "scenes.detectors=[{kind: adaptive}]")
    dropped = [r.meta for r in rows if r.kind == "dropped"]
    assert not kept(rows) and dropped and all(m["dropped_by"] == "blank" and m["blank_frac"] > 0.9 for m in dropped)
    rows = curate(VIDEOS / "testvideo.mp4")  # [0, 30) is all black
    blank = [r.meta for r in rows if r.kind == "dropped" and r.meta["start_frame"] == 0]
    assert blank and blank[0]["dropped_by"] == "blank" and blank[0]["luma"] < 5
    for m in (r.meta for r in rows if r.kind == "clip"):
        assert m["blank_frac"] == 0 and m["luma"] > 50 and m["contrast"] > 20


def test_videos_with_odd_chroma_rows_decode():
    # 160x90: each chroma plane is 80x45, which does not fill whole rows of PyAV's packed yuv420p array.
    paths, labels = read_labels([ROOT / "benchmarks" / "labels.json"], packaged_places())
    with open_source(str(paths["test.mp4"]), Storage()) as source:
        a = analyse(source, Detectors([DetectorConfig("adaptive")]).for_source(source.info.fps), 256)
    assert a.num_frames == labels["test.mp4"]["frames"] and len(a.breaks) > 100


def test_the_onnx_export_is_made_once_per_machine(tmp_path, monkeypatch):
    from curation.video import transnet

    class Mean(torch.nn.Module):  # stands in for the network: the cache does not look inside it
        def forward(self, x):
            return x.float().mean(dim=(2, 3, 4))

    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"the weights' bytes")
    built = []  # a worker that finds the export builds no network (and so never imports torch)

    def build(path):
        built.append(path)
        return Mean()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    window = np.random.default_rng(0).integers(0, 255, (1, WINDOW, 27, 48, 3), dtype=np.uint8)
    for _ in range(2):  # two workers on one machine
        out = transnet.on_openvino(transnet.openvino_model(str(weights), build))(window)
        assert np.allclose(out, window.mean(axis=(2, 3, 4)), atol=1e-3)
    assert len(built) == 1
    assert [p.suffix for p in (tmp_path / "cache" / "cinema-curation").iterdir()] == [".onnx"]  # no part left
    weights.write_bytes(b"other weights")
    transnet.openvino_model(str(weights), build)
    assert len(built) == 2
    (tmp_path / "a file").write_text("")  # a cache that cannot be made: each worker exports for itself
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a file"))
    transnet.on_openvino(transnet.openvino_model(str(weights), build))(window)
    assert len(built) == 3


def test_openvino_runs_on_the_workers_share_of_the_cpu_unpinned(monkeypatch):
    # Pinned (OpenVINO's default), every scene worker on a node put its network on the same first core.
    import openvino as ov
    import openvino.opset13 as ops

    from curation.video.transnet import compiled_for_cpu

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Ray sets it for a worker with num_cpus=1
    x = ops.parameter([1, 4], np.float32)
    compiled = compiled_for_cpu(ov.Model([ops.relu(x)], [x]))
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_adaptive_reports_no_cuts_in_fades():
    """The analysis frames are scaled without swscale's dither, whose pattern in the dark frames of a fade changes
    hue enough for adaptive to report cuts there (2 in fades.mp4, 3 around testvideo.mp4's fades)."""
    detectors = Detectors([DetectorConfig(kind="adaptive")])

    def cuts(name: str) -> set[int]:
        with open_source(str(VIDEOS / name), Storage(), 10**12) as source:
            return {b.start for b in analyse(source, detectors.for_source(source.info.fps), 256).breaks}

    assert cuts("fades.mp4") == set()
    labelled = set(read_labels([VIDEOS / "labels.json"])[1]["testvideo.mp4"]["cuts"])
    found = cuts("testvideo.mp4")
    assert labelled <= found and len(found - labelled) <= 1, found  # one more: a black run's end into a fade-in


@pytest.mark.parametrize("kind,args", [("adaptive", {"min_scene_len": 6}), ("content", {"luma_only": True}),
                                       ("content", {"weights": (1.0, 0.5, 2.0, 0.0)})])
def test_our_hsv_score_is_pyscenedetects_to_the_bit(kind, args):
    from scenedetect import FrameTimecode
    from scenedetect import detectors as sd

    from curation.video.shots import SCENEDETECT_KINDS

    if "weights" in args:
        args = {"weights": sd.ContentDetector.Components(*args["weights"])}
    theirs = {"adaptive": sd.AdaptiveDetector, "content": sd.ContentDetector}[kind](**args)
    ours = SCENEDETECT_KINDS[kind](**args)
    their_cuts, our_cuts = [], []
    for i, frame in enumerate(small_frames(VIDEOS / "testvideo.mp4")):
        their_cuts += theirs.process_frame(FrameTimecode(i, 30.0), frame)
        our_cuts += ours.process_frame(FrameTimecode(i, 30.0), frame)
        assert ours._frame_score == theirs._frame_score, i
    assert our_cuts == their_cuts and our_cuts

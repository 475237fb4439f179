"""Aesthetic scores: the LAION head's loader and arithmetic on a real photo, and the stage on tiny models over real
clips (batching, dropping, broken clips, captions off)."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from common import contract as C
from curation.dedup.signals import embedding_array
from curation.models.aesthetic import AestheticHead, AestheticScorer
from curation.pipeline.row import Row
from curation.stages import enabled_model_stages
from curation.stages.aesthetic import AestheticStage
from curation.stages.caption import CaptionPrepStage
from curation.video.frames import decode_image

from .model_stage_fixtures import ASSETS, clip_rows, job, run, taught_mllm  # noqa: F401

LINEAR = (0, 2, 4, 6, 7)  # the LAION MLP's Linear layers; dropouts sit between them


def scorer(tiny_paths, *overrides) -> AestheticScorer:
    return AestheticScorer.load(job(tiny_paths, *overrides).aesthetic, "cpu")


def test_head_from_safetensors_or_pth_scores_as_computed_by_hand(tiny_paths, tmp_path):
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    state = load_file(tiny_paths["aesthetic_head"])
    # the keys of the real sac+logos+ava1-l14-linearMSE.pth
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in LINEAR for p in ("weight", "bias"))
    pth = tmp_path / "head.pth"
    torch.save(state, pth)  # how the LAION predictor's .pth files were written: a plain state dict
    photo = Image.open(ASSETS / "bus.jpg").convert("RGB")
    clip_dir = tiny_paths["clip_vision"]
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embed = CLIPVisionModelWithProjection.from_pretrained(clip_dir).eval()(pixel_values=pixels).image_embeds[0]
        x = embed / embed.norm()
        for i in LINEAR:
            x = state[f"layers.{i}.weight"] @ x + state[f"layers.{i}.bias"]
    frame = np.array(photo)
    flipped = np.ascontiguousarray(frame[:, ::-1])
    for head in (tiny_paths["aesthetic_head"], pth):
        score = scorer(tiny_paths, f"aesthetic.head={head}")
        (one, e1), (two, e2) = score([frame[None], np.stack([frame, flipped])])
        assert one == pytest.approx(x.item(), abs=1e-5)
        # a clip scores the mean of its frames; its embedding is the normalised mean of its frames' embeddings
        (flip, ef), = score([flipped[None]])
        assert two == pytest.approx((one + flip) / 2, abs=1e-6)
        assert e1 == pytest.approx((embed / embed.norm()).detach().numpy(), abs=1e-5)
        mean = e1 + ef
        assert e2 == pytest.approx(mean / np.linalg.norm(mean), abs=1e-5)


class WritesAFile:
    """Unpickling this calls open(path, "w"): what a hostile .pth could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_bad_heads_are_refused_with_a_clear_message(tiny_paths, tmp_path):
    from safetensors.torch import save_file

    l14 = tmp_path / "l14.safetensors"
    save_file(AestheticHead(768).state_dict(), l14)  # a head for openai/clip-vit-large-patch14's 768-d embeddings
    with pytest.raises(ValueError, match="takes 768-d CLIP embeddings but aesthetic.clip_model gives 24-d ones"):
        scorer(tiny_paths, f"aesthetic.head={l14}")
    clip_weights = tiny_paths["clip_vision"] / "model.safetensors"
    with pytest.raises(ValueError, match="is not a LAION aesthetic predictor head"):
        scorer(tiny_paths, f"aesthetic.head={clip_weights}")
    with pytest.raises(FileNotFoundError, match="aesthetic.head: no file"):
        scorer(tiny_paths, f"aesthetic.head={tmp_path / 'missing.pth'}")
    marker = tmp_path / "written"
    hostile = tmp_path / "hostile.pth"
    torch.save({"layers.0.weight": torch.zeros(1024, 24), "x": WritesAFile(str(marker))}, hostile)
    with pytest.raises(ValueError, match="cannot read weights"):
        scorer(tiny_paths, f"aesthetic.head={hostile}")
    assert not marker.exists()  # weights_only: nothing in the file ran


def loaded(cfg) -> AestheticStage:
    stage = AestheticStage(cfg)
    stage.setup()
    return stage


def test_every_clip_gets_a_score_from_one_forward_pass_equal_to_scoring_it_alone(tiny_paths, clip_rows):
    cfg = job(tiny_paths, "aesthetic.batch_size=32")
    prepped = run([CaptionPrepStage], cfg, clip_rows)
    stage = loaded(cfg)
    frames_seen = []
    forward = stage.score.embed.clip.forward
    stage.score.embed.clip.forward = lambda **kw: frames_seen.append(len(kw["pixel_values"])) or forward(**kw)
    out = stage(prepped)
    # every frame of every clip in one forward pass: 3 (aesthetic.num_frames) of the 4 caption frames per clip
    assert frames_seen == [3 * len(prepped)]
    scores = [r.meta["aesthetic"] for r in out]
    assert all(r.kind == "clip" and isinstance(s, float) for r, s in zip(out, scores))
    assert len(set(scores)) == len(scores)  # one score per clip, not one for the batch
    assert scores == pytest.approx([stage([row])[0].meta["aesthetic"] for row in prepped], abs=1e-6)
    # the 3 scored frames are spread over the 4: the first, the third and the last
    first = [decode_image(prepped[0].frames[i]) for i in (0, 2, 3)]
    (score, embedding), = stage.score([np.stack(first)])
    assert scores[0] == pytest.approx(score, abs=1e-6)
    # the embedding travels as float16 for near-duplicate removal
    assert embedding_array([out[0].meta["embedding"]])[0] == pytest.approx(embedding, abs=2e-3)
    for row, prep in zip(out, prepped):  # captioning runs next: the frames stay for it
        assert row.frames is prep.frames and row.mp4 is prep.mp4
    pa.Table.from_pylist([C.manifest_row(r.meta, "part-000000") for r in out], schema=C.MANIFEST_SCHEMA)


def test_clips_below_min_score_are_dropped_before_captioning(tiny_paths, taught_mllm, clip_rows):
    base = job(tiny_paths)
    scores = sorted(r.meta["aesthetic"] for r in run([CaptionPrepStage, AestheticStage], base, clip_rows))
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # half the clips fall below
    cfg = job(tiny_paths, f"aesthetic.min_score={cut}", f"caption.model={taught_mllm}", "subjects.enabled=false")
    out = run(enabled_model_stages(cfg), cfg, clip_rows)
    dropped = [r for r in out if r.kind == "dropped"]
    kept = [r for r in out if r.kind == "clip"]
    assert len(dropped) == len(scores) // 2 and len(kept) == len(scores) - len(dropped)
    for r in dropped:
        m = r.meta
        assert m["dropped_by"] == "aesthetic" and m["aesthetic"] < cut and "motion" in m and m["clip_id"]
        assert "caption" not in m  # never captioned
        assert not (r.mp4 or r.frames)  # no bytes travel on to the writer
    for r in kept:
        assert r.meta["aesthetic"] >= cut and r.meta["caption"] and r.frames is None


def test_a_broken_clip_loses_only_itself(tiny_paths, clip_rows):
    cfg = job(tiny_paths)

    def renamed(row, clip_id, **fields):
        return row.replace(**fields, meta={**row.meta, "clip_id": clip_id})

    prepped = run([CaptionPrepStage], cfg, [renamed(clip_rows[0], "broken_mp4", mp4=b"not an mp4"), *clip_rows])
    assert prepped[0].kind == "error" and prepped[0].meta["stage"] == "caption_prep"
    stage = loaded(cfg)
    alone = {r.meta["clip_id"]: stage([r])[0].meta["aesthetic"] for r in prepped[2:]}
    poisoned = decode_image(prepped[1].frames[0])
    real = stage.score

    def score(videos):
        if any(np.array_equal(v[0], poisoned) for v in videos):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(videos)

    stage.score = score
    summary = Row("summary", "s", {"num_clips": 9})
    broken_frames = renamed(prepped[2], "broken_frames", frames=[b"not a jpeg"] * 4)
    out = stage([prepped[0], broken_frames, summary, *prepped[1:]])
    assert [r.kind for r in out] == ["error", "error", "summary", "error"] + ["clip"] * len(alone)
    assert out[0] is prepped[0] and out[2] is summary
    assert out[1].meta["stage"] == "aesthetic" and out[1].meta["clip_id"] == "broken_frames"
    assert out[3].meta["clip_id"] == prepped[1].meta["clip_id"] and "illegal memory" in out[3].meta["message"]
    for r in out[4:]:  # scored clip by clip after the batched call failed: the same scores
        assert r.meta["aesthetic"] == pytest.approx(alone[r.meta["clip_id"]], abs=1e-6)


def test_without_captions_prep_samples_the_aesthetic_frames_and_the_stage_removes_them(tiny_paths, clip_rows):
    cfg = job(tiny_paths, "caption.enabled=false", "aesthetic.num_frames=2")
    stages = enabled_model_stages(cfg)
    assert stages == [CaptionPrepStage, AestheticStage]
    prepped = run(stages[:1], cfg, clip_rows)
    for r in prepped:
        n, picks = r.meta["num_frames"], r.meta["frame_indices"]
        assert len(r.frames) == 2 and picks[0] < n / 2 <= picks[1] < n
    out = run(stages[1:], cfg, prepped)
    for r, clip in zip(out, clip_rows):
        assert r.kind == "clip" and isinstance(r.meta["aesthetic"], float)
        assert r.frames is None and r.mp4 is clip.mp4

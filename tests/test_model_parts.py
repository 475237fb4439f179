"""Shapes for 0..6 subjects, VAE causality, clean subject tokens outside the loss, RoPE positions, ablations."""

import torch

from cinema_model.config import latent_frames
from cinema_model.dit import CinemaDiT
from cinema_model.model import CinemaModel
from cinema_model.rope import visual_positions
from tests.model_fixtures import save_trained, subject_batch, tiny_config, trained_weights


def test_loss_and_generate_for_zero_to_six_subjects():
    torch.manual_seed(0)
    model = CinemaModel(tiny_config(flow=dict(condition_dropout=0.0))).train()
    batch = subject_batch([0, 1, 2, 3, 4, 5, 6])  # every K in one batch, padded to 6
    assert batch["subjects"].shape == (7, 6, 3, 32, 32)
    out = model.loss(batch)
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(not p.requires_grad for part in model.frozen_parts().values() for p in part.parameters())
    for k in (0, 6):
        one = subject_batch([k])
        video = model.generate(one["captions"], one["subjects"], one["num_subjects"], seed=0, steps=2)
        assert video.shape == (1, 9, 3, 32, 32) and video.abs().max() <= 1


def test_padded_subject_slots_change_nothing():
    torch.manual_seed(0)
    dit = CinemaDiT(tiny_config().dit).eval()
    x, text, t = torch.randn(1, 3, 16, 4, 4), torch.randn(1, 16, 32), torch.tensor([0.4])
    subjects = torch.randn(1, 2, 16, 4, 4)
    padded = torch.cat([subjects, torch.randn(1, 3, 16, 4, 4)], dim=1)
    with torch.no_grad():
        plain = dit(x, t, text, subjects)
        masked = dit(x, t, text, padded, torch.tensor([[True, True, False, False, False]]))
        none = dit(x, t, text)
    torch.testing.assert_close(masked, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, none)  # the subjects do condition the video


def test_vae_is_causal_in_time():
    model = CinemaModel(tiny_config())
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 17, 3, 32, 32, generator=g) * 2 - 1
    changed = clip.clone()
    changed[:, 9:] = torch.rand(1, 8, 3, 32, 32, generator=g) * 2 - 1
    a, b = model.vae.encode(clip), model.vae.encode(changed)
    assert a.shape == (1, latent_frames(17), 16, 4, 4) == (1, 5, 16, 4, 4)
    # Latent frames 0..2 see frames 0..8 only: later frames cannot change them, but do change the rest.
    torch.testing.assert_close(a[:, :3], b[:, :3])
    torch.testing.assert_close(a[:, :3], model.vae.encode(clip[:, :9]))
    assert not torch.allclose(a[:, 3:], b[:, 3:])
    assert model.vae.encode(clip[:, :1]).shape[1] == 1  # a subject image is one latent frame


def test_subject_tokens_enter_clean_and_stay_out_of_the_loss():
    torch.manual_seed(0)
    model = CinemaModel(tiny_config(flow=dict(condition_dropout=0.0))).train()
    batch = subject_batch([2, 1])
    batch["latents"] = model.vae.encode(batch["video"])
    seen = {}
    model.dit.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    last = model.dit.blocks[-1]
    last.register_forward_hook(lambda m, args, out: seen.update(last=out) or out[1].retain_grad() or out[2].retain_grad())

    clean = model.vae.encode_images(batch["subjects"], torch.tensor([[True, True], [True, False]]))
    for _ in range(2):  # two different noise draws and timesteps
        loss = model.loss(batch)["loss"]
        noisy_video, t, _, subjects, present = seen["args"]
        assert torch.equal(subjects, clean)  # never noised, whatever t
        assert not torch.allclose(noisy_video, batch["latents"])
        assert seen["out"].shape == batch["latents"].shape  # the prediction covers the video only
    loss.backward()
    _, video_tokens, subject_tokens = seen["last"]
    assert video_tokens.grad.abs().sum() > 0
    assert subject_tokens.grad is None or subject_tokens.grad.abs().sum() == 0


def test_subject_rope_positions_are_disjoint_from_the_video():
    pos = visual_positions(frames=12, height=30, width=45, subjects=6)
    video, subjects = pos[: 12 * 30 * 45], pos[12 * 30 * 45:]
    assert len(subjects) == 6 * 30 * 45
    assert not {tuple(p) for p in video.tolist()} & {tuple(p) for p in subjects.tolist()}
    assert subjects[:, 0].unique().tolist() == list(range(12, 18))  # subject k at temporal index T + k


def test_ablation_switches():
    batch = subject_batch([2])
    t5 = CinemaModel(tiny_config(ablation=dict(conditioning="t5")))
    assert t5.mllm is None and t5.aligner is None and set(t5.trainable_parts()) == {"dit"}
    assert torch.isfinite(t5.loss(batch)["loss"])

    no_subjects = CinemaModel(tiny_config(ablation=dict(subject_tokens=False)))
    assert no_subjects.subject_latents(batch["subjects"], batch["num_subjects"]) == (None, None)
    assert torch.isfinite(no_subjects.loss(batch)["loss"])


def test_pretrained_aligner_loads_and_trained_parts_round_trip(tmp_path):
    torch.manual_seed(1)
    stage1 = CinemaModel(tiny_config(), stage="aligner")
    assert stage1.dit is None and stage1.vae is None and set(stage1.trainable_parts()) == {"aligner"}
    save_trained(stage1, tmp_path / "aligner.safetensors")  # what an `aligner` training run exports
    torch.manual_seed(2)
    random_init = CinemaModel(tiny_config())  # ablation (d): AlignerNet from random init
    pretrained = CinemaModel(tiny_config(aligner=dict(pretrained=str(tmp_path / "aligner.safetensors"))))
    for name, w in stage1.aligner.state_dict().items():
        assert torch.equal(pretrained.aligner.state_dict()[name], w)
    assert not torch.equal(random_init.aligner.out_proj.weight, stage1.aligner.out_proj.weight)

    save_trained(pretrained, tmp_path / "trained.safetensors")
    random_init.load_trainable(tmp_path / "trained.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(trained_weights(random_init).values(),
                                                 trained_weights(pretrained).values()))


def test_vae_round_trip_keeps_each_frame_in_place_at_the_default_frame_count():
    """A square moving across the frame, encoded and decoded at the default frame count. Latent j (j >= 1) holds
    frames 4j-3..4j: a change of it must move the decoded frames from 4j-3 on, most within its own four (the
    decoder's norms spread a small part over its chunk, its causal convolutions some into the next frames).
    Measured: latent 1 moves frames 1-6 at 49 frames (13 latents), frames 4-9 at 45 (12)."""
    from cinema_model.config import VideoConfig

    frames = VideoConfig().num_frames
    vae = CinemaModel(tiny_config(), stage="cinema").vae
    video = -torch.ones(1, frames, 3, 32, 32)
    for f in range(frames):
        x = f * 24 // (frames - 1)
        video[0, f, :, 12:20, x:x + 8] = 1.0
    latents = vae.encode(video)
    assert latents.shape[1] == latent_frames(frames)
    decoded = vae.decode(latents)
    assert decoded.shape[1] == frames
    for j in (1, 2, latents.shape[1] // 2, latents.shape[1] - 1):
        bumped = latents.clone()
        bumped[:, j] += 1.0
        change = (vae.decode(bumped) - decoded).abs().flatten(2).mean(-1)[0]
        change /= change.max()
        moved = (change > 0.25).nonzero().flatten().tolist()
        assert moved[0] == 4 * j - 3 and 4 * j - 3 <= int(change.argmax()) <= 4 * j, (j, moved)


def test_video_frame_counts_that_misalign_the_vae_are_refused():
    import pytest

    from cinema_model.config import preset
    from common.typed_config import ConfigError

    for frames in (45, 13):  # 12 and 4 latents: an even count
        with pytest.raises(ConfigError, match=f"video.num_frames={frames}: must be 1 \\+ 8k"):
            preset("tiny", "unused", overrides=[f"video.num_frames={frames}"])
    assert preset("full").video.num_frames == 49

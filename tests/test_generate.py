"""generate's inference path: batched CFG, device/dtype, weights without the CogVideoX load, EMA, VAE memory options."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cinema_model.__main__ import main
from cinema_model.model import CinemaModel

from .model_fixtures import save_trained, subject_batch, tiny_checkpoints, tiny_config, trained_weights


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def _sheet(path) -> bytes:
    """The contact sheet beside a video: its frames straight from the sampled tensor (the H.264 file's bytes
    vary from run to run for the same frames)."""
    return path.with_suffix(".png").read_bytes()


def _tiny_args(*more: str) -> list[str]:
    return ["generate", "--preset", "tiny", "--checkpoints", tiny_checkpoints(), "--prompt", "a dog on a beach",
            "--steps", "2", "--device", "cpu", *more]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CinemaModel(tiny_config()).eval()


def test_batched_cfg_gives_the_two_forward_sample(model):
    b = subject_batch([2, 1, 0])  # the conditional half pads sample 1's slot and sample 2's two slots
    args = (b["captions"], b["subjects"], b["num_subjects"])
    batched = model.sample_latents(*args, seed=1, steps=3, guidance=3.0)
    reference = model.sample_latents(*args, seed=1, steps=3, guidance=3.0, batched_cfg=False)
    assert torch.allclose(batched, reference, atol=1e-5 * reference.abs().max()), (batched - reference).abs().max()
    no_guidance = model.sample_latents(*args, seed=1, steps=3, guidance=1.0)
    assert (no_guidance - reference).abs().max() > 1e-2  # the unconditional branch is really mixed in


def test_bfloat16_dit_on_cpu_samples_close_to_float32(model, tmp_path):
    b = subject_batch([1])
    args = (b["captions"], b["subjects"], b["num_subjects"])
    reference = model.sample_latents(*args, seed=2)
    model.dit.to(torch.bfloat16)
    try:
        half = model.sample_latents(*args, seed=2)
    finally:
        model.dit.float()
    assert half.dtype == torch.float32  # the Euler integration stays in float32
    assert (half - reference).abs().max() < 0.05 * reference.abs().max()

    main(_tiny_args("--dtype", "bfloat16", "--out", str(tmp_path / "v.mp4")))
    assert _frames(tmp_path / "v.mp4").shape == (9, 32, 32, 3)


def _weights(tmp_path, seed: int, name: str):
    torch.manual_seed(seed)
    model = CinemaModel(tiny_config())
    save_trained(model, tmp_path / name)
    return trained_weights(model)


def test_weights_replace_the_initial_dit_without_loading_cogvideox(tmp_path):
    # As the full preset names CogVideoX-5B: a folder that is not there, so that any attempt to load it fails.
    init = ["--set", f"dit.init_from={tmp_path / 'CogVideoX-5b'}", "--set", "dit.init_subfolder=transformer"]
    _weights(tmp_path, 5, "trained.safetensors")
    with pytest.raises(Exception, match="CogVideoX-5b"):  # without --weights the DiT starts from it
        main(_tiny_args(*init, "--out", str(tmp_path / "a.mp4")))
    main(_tiny_args(*init, "--weights", str(tmp_path / "trained.safetensors"), "--out", str(tmp_path / "b.mp4")))
    main(_tiny_args("--weights", str(tmp_path / "trained.safetensors"), "--out", str(tmp_path / "c.mp4")))
    assert _sheet(tmp_path / "b.mp4") == _sheet(tmp_path / "c.mp4")  # the file's DiT

    dit_only = {k: v for k, v in _weights(tmp_path, 5, "x.safetensors").items() if k.startswith("dit.")}
    save_file({k: v.contiguous() for k, v in dit_only.items()}, tmp_path / "dit_only.safetensors")
    with pytest.raises(SystemExit, match="holds no aligner weights"):  # not a silently random AlignerNet
        main(_tiny_args("--weights", str(tmp_path / "dit_only.safetensors"), "--out", str(tmp_path / "d.mp4")))


def test_ema_picks_the_ema_file_beside_the_weights(tmp_path):
    _weights(tmp_path, 1, "trained.safetensors")
    _weights(tmp_path, 2, "trained.ema.safetensors")
    weights = str(tmp_path / "trained.safetensors")
    main(_tiny_args("--weights", weights, "--ema", "--out", str(tmp_path / "ema.mp4")))
    main(_tiny_args("--weights", str(tmp_path / "trained.ema.safetensors"), "--out", str(tmp_path / "direct.mp4")))
    main(_tiny_args("--weights", weights, "--out", str(tmp_path / "plain.mp4")))
    ema, direct, plain = (_sheet(tmp_path / f"{n}.mp4") for n in ("ema", "direct", "plain"))
    assert ema == direct and ema != plain
    with pytest.raises(SystemExit, match="no weights file .*other.ema.safetensors"):
        main(_tiny_args("--weights", str(tmp_path / "other.safetensors"), "--ema", "--out", str(tmp_path / "x.mp4")))


def test_vae_tiling_and_slicing_decode_as_without(model, tmp_path, monkeypatch):
    """Frames above half the VAE's sample size (240x360) are decoded in blended tiles; two videos one at a time."""
    vae = model.vae
    latents = torch.randn(2, 1, 16, 248 // 8, 368 // 8, generator=torch.Generator().manual_seed(0))
    whole = vae.decode(latents)
    try:
        assert vae.set_memory(tiling=True, slicing=True).vae.use_tiling
        tiled = vae.decode(latents)
    finally:
        vae.set_memory()
    assert tiled.shape == whole.shape == (2, 1, 3, 248, 368)
    diff = (tiled - whole).abs()
    assert 0 < diff.mean() < 0.05 * whole.abs().mean() and diff.max() < 1  # seams blended, not garbage

    from cinema_model.vae import VideoVae

    calls, set_memory = [], VideoVae.set_memory
    monkeypatch.setattr(VideoVae, "set_memory", lambda self, **kw: calls.append(kw) or set_memory(self, **kw))
    main(_tiny_args("--vae-tiling", "--vae-slicing", "--out", str(tmp_path / "v.mp4")))
    main(_tiny_args("--out", str(tmp_path / "w.mp4")))
    assert calls == [dict(tiling=True, slicing=True), dict(tiling=False, slicing=False)]
    assert _sheet(tmp_path / "v.mp4") == _sheet(tmp_path / "w.mp4")  # 32x32: below a tile


def test_the_gpu_benchmarks_code_paths_run_on_cpu_at_the_tiny_preset(tmp_path):
    """What benchmarks/gpu_check.sh runs on a GPU, here as its --smoke runs it, at the tiny preset on CPU: it must not
    be the GPU run that finds a crash."""
    import json
    import subprocess
    import sys

    from .conftest import ROOT

    def bench(module: str, *args: str) -> dict:
        out = tmp_path / f"{module}.json"
        subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--device", "cpu", "--preset", "tiny", *args,
                        "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
        return json.loads(out.read_text())

    rows = bench("model_bench", "--gpu-only", "--reps", "1", "--subjects", "1", "--frames", "1")["gpu"]
    assert [(r["video"][0], r["activation_checkpointing"]) for r in rows] == [(9, True), (9, False), (1, True)]
    assert all(r["fwd_bwd_s"] > 0 for r in rows) and rows[2]["tokens"] < rows[0]["tokens"]
    row = bench("generate_bench", "--checkpoints", tiny_checkpoints(), "--steps", "2", "--subjects", "1")
    assert row["video"] == [9, 32, 32] and row["seconds"] > 0 and row["subjects"] == 1

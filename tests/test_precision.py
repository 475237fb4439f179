"""Precision as in inference: under FSDP2 mixed precision (bf16) the DiT gets its timestep and RoPE tables in fp32,
and its first block sees exactly what it sees when ``generate`` runs the same weights in bf16."""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh

from cinema_model.dit import timestep_features
from cinema_model.model import CinemaModel
from jobs.loopback_s3 import free_port
from training.materialize import materialize_shards
from training.parallelize import parallelize

from .model_fixtures import subject_batch, tiny_config


def _block_inputs(model: CinemaModel) -> dict:
    """Records what the first DiT block and the timestep embedding receive, after FSDP2's own pre-forward hooks."""
    seen = {}

    def keep(name):
        def hook(module, args):
            seen.setdefault(name, args)  # the first call's; a hook that returned them would replace later inputs
        return hook

    model.dit.time_embed.register_forward_pre_hook(keep("t"))
    model.dit.blocks[0].register_forward_pre_hook(keep("block"))
    return seen


def test_the_dit_gets_fp32_timesteps_and_rope_under_fsdp2_as_generate_gives_them(monkeypatch):
    from training.trainer import distributed

    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(k, v)
    cfg = tiny_config(ablation=dict(aligner_from_scratch=True))
    batch = subject_batch([1, 2])
    t = torch.tensor([0.7123456, 0.25])
    with distributed():
        trained = CinemaModel(cfg, trained_on_meta=True, seed=0)
        parallelize(trained, init_device_mesh("cpu", (1,)), activation_checkpointing=False, compile=False,
                    param_dtype=torch.bfloat16)
        materialize_shards(trained, torch.device("cpu"))
        seen_train = _block_inputs(trained)
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        text = torch.randn(2, cfg.t5.max_length, cfg.dit.text_dim)
        x = torch.randn(2, 3, cfg.dit.latent_channels, 4, 4)
        with torch.no_grad():
            trained.dit(x, t, text)
            loss = trained.loss(batch, gens, timesteps=t)["flow"]
    assert torch.isfinite(loss)

    # generate's way: a plain build of the same weights, its DiT cast to bf16, its inputs cast by sample_latents.
    plain = CinemaModel(cfg, seed=0)
    plain.dit.to(torch.bfloat16)
    seen_plain = _block_inputs(plain)
    with torch.no_grad():
        plain.dit(x.to(torch.bfloat16), t, text.to(torch.bfloat16))

    assert seen_train["t"][0].dtype == torch.float32 and torch.equal(seen_train["t"][0], t)  # not 0.7109375
    text_tokens, video_tokens, _, temb, _, (cos, sin), _ = seen_train["block"]
    assert cos.dtype == sin.dtype == torch.float32
    assert torch.allclose(cos ** 2 + sin ** 2, torch.ones_like(cos), atol=1e-6)
    for got, want in zip(seen_train["block"], seen_plain["block"]):
        if isinstance(got, tuple):
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        elif got is not None:
            assert got.dtype == want.dtype and torch.equal(got, want)
    assert video_tokens.dtype == text_tokens.dtype == temb.dtype == torch.bfloat16  # compute stays bf16
    # What a bf16 timestep would have cost: the sinusoid of 0.7109375 differs visibly from that of 0.7123456.
    drift = timestep_features(t[:1].bfloat16(), 64) - timestep_features(t[:1], 64)
    assert drift.abs().max() > 0.1

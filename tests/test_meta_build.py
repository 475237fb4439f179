"""The meta-device build: trained parts built on meta, sharded, materialised shard by shard, with their initial weights
read straight into the shards, must equal the plain (eager) build; and the conversion it reads must equal diffusers'."""

from __future__ import annotations

import subprocess

import pytest
import torch

from cinema_model.initial_weights import materialize
from cinema_model.model import CinemaModel

from .model_fixtures import converted_cogvideox, save_trained, tiny_checkpoints, tiny_config, trained_weights
from .test_trainer import ROOT, torchrun


def _diffusers_conversion(folder) -> dict[str, torch.Tensor]:
    """The conversion as it was done before: a whole diffusers model in fp32, its state dict renamed."""
    from diffusers import CogVideoXTransformer3DModel

    source = CogVideoXTransformer3DModel.from_pretrained(str(folder), torch_dtype=torch.float32)
    return converted_cogvideox(source.state_dict())


def _pretrained_aligner(path) -> None:
    torch.manual_seed(3)
    stage1 = CinemaModel(tiny_config(), stage="aligner")
    with torch.no_grad():
        for p in stage1.aligner.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # no init-like values: a key mapped wrong cannot pass
    save_trained(stage1, path)


@pytest.mark.slow
def test_two_rank_meta_build_with_sharded_encoders_equals_the_eager_build_and_its_loss(tmp_path):
    """2 gloo ranks: the trainer's order (meta, fully_shard with the MLLM sharded per decoder layer, materialise) on
    the tiny preset, seeded and from CogVideoX + a pretrained AlignerNet; rank 0 gathers every weight and compares
    it with a plain build's, and the loss of the same samples with it."""
    _pretrained_aligner(tmp_path / "aligner.safetensors")
    cmd = torchrun(2) + ["-m", "tests.fsdp_grad_worker", "meta", tiny_checkpoints(), str(tmp_path / "aligner.safetensors")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("META-MATCH")]
    assert len(lines) == 2, out.stdout[-2000:] + out.stderr[-3000:]
    for line in lines:
        fields = dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)
        assert int(fields["keys"]) > 50 and fields["sharded"] == fields["keys"], line  # every weight a shard
        assert fields["mllm_sharded"] == "True" and fields["unequal"] == "0", line
        assert float(fields["loss"]) == pytest.approx(float(fields["ref_loss"]), rel=1e-6, abs=1e-7), line


def test_streamed_conversion_equals_the_diffusers_conversion_key_by_key():
    folder = f"{tiny_checkpoints()}/cogvideox"
    model = CinemaModel(tiny_config(dit=dict(init_from=folder)), seed=0)
    expected = _diffusers_conversion(folder)
    got = model.dit.state_dict()
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_sharded_bf16_checkpoint_from_a_pipeline_subfolder_loads_cast_to_float32(tmp_path):
    """CogVideoX-5B's layout: transformer/ of a pipeline folder, bf16, split over files named by an index."""
    from diffusers import CogVideoXTransformer3DModel

    source = CogVideoXTransformer3DModel.from_pretrained(f"{tiny_checkpoints()}/cogvideox", torch_dtype=torch.bfloat16)
    source.save_pretrained(tmp_path / "pipeline" / "transformer", max_shard_size="50KB")
    assert len(list((tmp_path / "pipeline" / "transformer").glob("*.safetensors"))) >= 2
    cfg = tiny_config(dit=dict(init_from=str(tmp_path / "pipeline"), init_subfolder="transformer"))
    got = CinemaModel(cfg, seed=0).dit.state_dict()
    expected = _diffusers_conversion(tmp_path / "pipeline" / "transformer")  # from_pretrained casts bf16 -> fp32
    assert all(got[k].dtype == torch.float32 and torch.equal(got[k], expected[k]) for k in expected)


def test_the_conversion_stays_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(f"{tiny_checkpoints()}/cogvideox/diffusion_pytorch_model.safetensors")
    (tmp_path / "extra").mkdir()
    save_file({**state, "ofs_embedding.linear_1.weight": torch.zeros(4, 4)},
              str(tmp_path / "extra" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(KeyError, match="ofs_embedding.linear_1.weight.*no counterpart"):
        CinemaModel(tiny_config(dit=dict(init_from=str(tmp_path / "extra"))))
    (tmp_path / "missing").mkdir()
    save_file({k: v for k, v in state.items() if k != "proj_out.bias"},
              str(tmp_path / "missing" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(KeyError, match=r"missing \['final.proj.bias'\]"):
        CinemaModel(tiny_config(dit=dict(init_from=str(tmp_path / "missing"))))
    (tmp_path / "shape").mkdir()
    save_file({**state, "proj_out.bias": torch.zeros(3)}, str(tmp_path / "shape" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="proj_out.bias"):
        CinemaModel(tiny_config(dit=dict(init_from=str(tmp_path / "shape"))))


def test_the_seeded_init_depends_on_the_seed_only(tmp_path):
    torch.manual_seed(1)
    a = trained_weights(CinemaModel(tiny_config(), seed=5))
    torch.manual_seed(2)
    b = trained_weights(CinemaModel(tiny_config(), seed=5))
    c = trained_weights(CinemaModel(tiny_config(), seed=6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if a[k].ndim == 2]
    assert all(not torch.equal(a[k], c[k]) for k in weights)
    # PyTorch's default scales: a Linear's weights within 1/sqrt(fan_in), LayerNorms at one.
    w = a["dit.blocks.0.attention.wq.weight"]
    assert w.abs().max() <= w.shape[1] ** -0.5 and w.std() > 0.4 * w.shape[1] ** -0.5
    assert torch.equal(a["dit.blocks.0.norm1.norm.weight"], torch.ones_like(a["dit.blocks.0.norm1.norm.weight"]))


def test_pretrained_aligner_loads_into_the_meta_build_exactly(tmp_path):
    _pretrained_aligner(tmp_path / "aligner.safetensors")
    model = CinemaModel(tiny_config(aligner=dict(pretrained=str(tmp_path / "aligner.safetensors"))),
                        trained_on_meta=True, seed=0)
    assert model.aligner.out_proj.weight.is_meta
    materialize(model, "cpu")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "aligner.safetensors")
    got = {f"aligner.{k}": v for k, v in model.aligner.state_dict().items()}
    assert sorted(got) == sorted(saved) and all(torch.equal(got[k], saved[k]) for k in saved)

"""CogVideoX-layout conversion and the full preset's parameter counts (built on the meta device)."""

import torch

from cinema_model.config import preset
from cinema_model.convert import cogvideox_kwargs
from cinema_model.dit import CinemaDiT
from cinema_model.model import CinemaModel
from cinema_model.rope import rope_cos_sin, visual_positions
from tests.model_fixtures import converted_cogvideox, tiny_checkpoints, tiny_config


def _cogvideox():
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel.from_pretrained(f"{tiny_checkpoints()}/cogvideox").eval()


def test_conversion_maps_every_weight():
    source = _cogvideox().state_dict()
    converted = converted_cogvideox(source)
    target = CinemaDiT(tiny_config().dit).state_dict()
    assert len(converted) == len(source) and set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)


def test_converted_dit_matches_cogvideox_outputs():
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cfg = tiny_config(dit=dict(init_from=f"{tiny_checkpoints()}/cogvideox"))
    model = CinemaModel(cfg)  # loads through the config switch, as a real CogVideoX-5B init would
    dit, source = model.dit.eval(), _cogvideox()
    x, text, t = torch.randn(2, 3, 16, 4, 6), torch.randn(2, 16, 32), torch.tensor([0.3, 0.9])
    rope = get_3d_rotary_pos_embed(16, ((0, 0), (2, 3)), (2, 3), 3)  # the pipeline's RoPE at full-grid crop
    torch.testing.assert_close(rope_cos_sin(visual_positions(3, 2, 3, 0), 16, 10000.0), rope)
    with torch.no_grad():
        expected = source(x, text, t * 1000, image_rotary_emb=rope, return_dict=False)[0]
        torch.testing.assert_close(dit(x, t, text), expected, atol=1e-5, rtol=1e-5)


def _t5_count(a: dict) -> int:
    d, inner = a["d_model"], a["num_heads"] * a["d_kv"]
    layer = 4 * d * inner + 3 * d * a["d_ff"] + 2 * d  # attention, gated FFN, two RMS norms
    return a["vocab_size"] * d + a["num_layers"] * layer + d + 32 * a["num_heads"]  # + final norm, rel. bias


def _qwen2vl_count(a: dict) -> int:
    t, v = a["text_config"], a["vision_config"]
    h, kv = t["hidden_size"], t["hidden_size"] // t["num_attention_heads"] * t["num_key_value_heads"]
    text_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * t["intermediate_size"] + 2 * h
    text = t["vocab_size"] * h + t["num_hidden_layers"] * text_layer + h
    e, m = v["embed_dim"], v["embed_dim"] * v["spatial_merge_size"] ** 2
    vision_layer = 4 * e + (3 * e * e + 3 * e) + (e * e + e) + 2 * e * v["mlp_ratio"] * e + v["mlp_ratio"] * e + e
    merger = 2 * e + (m * m + m) + (m * v["hidden_size"] + v["hidden_size"])
    patch = 3 * v["temporal_patch_size"] * v["patch_size"] ** 2 * e
    return text + patch + v["depth"] * vision_layer + merger


def test_full_preset_parameter_counts_on_meta():
    from diffusers import CogVideoXTransformer3DModel

    cfg = preset("full")
    with torch.device("meta"):
        model = CinemaModel(cfg, weights=False)
        t5 = CinemaModel(cfg, stage="aligner", weights=False).t5
        cogvideox_5b = CogVideoXTransformer3DModel(**cogvideox_kwargs(cfg.dit))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert model.dit.blocks[0].attention.wq.weight.is_meta and len(model.dit.blocks) == 42
    assert count(model.dit) == count(cogvideox_5b)
    assert count(t5) == _t5_count(cfg.t5.arch)
    assert count(model.mllm) == _qwen2vl_count(cfg.mllm.arch)  # the base model: no LM head
    # Ballparks: CogVideoX-5B transformer 5.6 B, T5-XXL encoder 4.8 B, Qwen2-VL-7B 8.3 B less its 0.55 B LM head.
    assert 5.4e9 < count(model.dit) < 5.8e9
    assert 4.6e9 < count(t5) < 4.9e9
    assert 7.6e9 < count(model.mllm) < 7.9e9
    assert 0.05e9 < count(model.aligner) < 0.15e9
    assert 0.2e9 < count(model.vae) < 0.25e9
    assert model.aligner.queries.shape == (226, 768) and model.aligner.out_proj.out_features == 4096

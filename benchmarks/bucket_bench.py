"""Mixed-length buckets and precision: what the training window costs, and what the fp32 timestep changes.

1. Step time of the mid preset's DiT (forward + backward + AdamW, CPU, fp32) on batches that cycle through the
   default frame counts (17, 25, 33, 41, 49: 5 to 13 latent frames) against one bucket of 33 frames (9 latent frames,
   the same tokens per step on average). The two alternate step by step in one process, so a busy machine slows both
   alike; reported: the median step time per token of each, and their ratio.
2. Loss parity under FSDP2 (one gloo rank, bf16 compute): the same samples, timesteps and noise with the DiT's
   inputs cast to bf16 by FSDP2 (before the fix) and with its timestep and RoPE in fp32 (now), against the
   difference bf16 itself makes (the same DiT in fp32).

Writes out/bench/buckets.json.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from benchmarks.results import write_result
from cinema_model.config import latent_frames, preset
from cinema_model.dit import CinemaDiT
from cinema_model.flow import add_noise, velocity_loss

FRAMES = (17, 25, 33, 41, 49)
SINGLE = 33
ROUNDS = 6


def _config():
    return preset("mid", checkpoints="(frozen parts not loaded)")  # the DiT's shapes only


def _batch(cfg, frames: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    v, d = cfg.video, cfg.dit
    x0 = torch.randn(1, latent_frames(frames), d.latent_channels, v.height // 8, v.width // 8, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    text = torch.randn(1, cfg.t5.max_length, d.text_dim, generator=g)
    t = torch.rand(1, generator=g)
    return x0, noise, text, t


def _loss(dit, batch):
    x0, noise, text, t = batch
    return velocity_loss(dit(add_noise(x0, noise, t), t, text), x0, noise)


def step_times() -> dict:
    cfg = _config()
    torch.manual_seed(0)
    dit = CinemaDiT(cfg.dit)
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-5)
    tokens = {f: latent_frames(f) * (cfg.video.height // 16) * (cfg.video.width // 16) for f in FRAMES}
    per_token = {"mixed": [], "single": []}

    def step(frames: int, seed: int) -> float:
        batch = _batch(cfg, frames, seed)
        t0 = time.perf_counter()
        _loss(dit, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(SINGLE, 0)  # warm-up
    for r in range(ROUNDS):
        for i, frames in enumerate(FRAMES):
            per_token["mixed"].append(step(frames, 100 * r + i) / tokens[frames])
            per_token["single"].append(step(SINGLE, 100 * r + i) / tokens[SINGLE])
    median = {k: statistics.median(v) for k, v in per_token.items()}
    return {"preset": "mid", "frames_mixed": list(FRAMES), "frames_single": SINGLE,
            "mean_tokens_mixed": statistics.mean(tokens.values()), "tokens_single": tokens[SINGLE],
            "median_ms_per_1k_tokens": {k: 1e6 * v for k, v in median.items()},
            "mixed_over_single": median["mixed"] / median["single"], "steps_each": len(per_token["mixed"])}


def parity() -> dict:
    """Losses of the same samples under FSDP2 bf16, before and after the fix, and in fp32."""
    from jobs.loopback_s3 import free_port
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from training.trainer import distributed

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    cfg = _config()
    batches = [_batch(cfg, f, 1000 + i) for i, f in enumerate(FRAMES * 2)]

    def build():
        torch.manual_seed(0)
        return CinemaDiT(cfg.dit)

    losses = {}
    with distributed():
        mesh = init_device_mesh("cpu", (1,))
        with torch.no_grad():
            losses["fp32"] = [float(_loss(build(), b)) for b in batches]
            for name, cast in (("bf16_inputs_cast", True), ("bf16_fp32_t_rope", False)):
                dit = build()
                mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                          cast_forward_inputs=cast)
                for block in dit.blocks:
                    fully_shard(block, mesh=mesh, mp_policy=mp)
                fully_shard(dit, mesh=mesh, mp_policy=mp)
                losses[name] = [float(_loss(dit, b)) for b in batches]
    fp32, old, new = losses["fp32"], losses["bf16_inputs_cast"], losses["bf16_fp32_t_rope"]

    def rel(a, b):
        return statistics.mean(abs(x - y) / abs(y) for x, y in zip(a, b))

    return {"samples": len(batches), "mean_rel_diff_new_vs_old": rel(new, old), "mean_rel_diff_old_vs_fp32": rel(old, fp32),
            "mean_rel_diff_new_vs_fp32": rel(new, fp32), "losses": losses}


def main() -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    result = {"step_time": step_times()}
    s = result["step_time"]
    print(f"mid DiT step time per token: mixed buckets {FRAMES} {s['median_ms_per_1k_tokens']['mixed']:.2f} ms/1k "
          f"tokens, one bucket of {SINGLE} frames {s['median_ms_per_1k_tokens']['single']:.2f} ms/1k tokens: "
          f"ratio {s['mixed_over_single']:.3f} ({s['steps_each']} steps each, alternated)")
    result["parity"] = p = parity()
    print(f"loss parity over {p['samples']} samples: fp32 t/RoPE vs FSDP2-cast bf16 inputs {p['mean_rel_diff_new_vs_old']:.2e} "
          f"mean relative difference; bf16 itself vs fp32: {p['mean_rel_diff_old_vs_fp32']:.2e} (before), "
          f"{p['mean_rel_diff_new_vs_fp32']:.2e} (now)")
    write_result("buckets", result)


if __name__ == "__main__":
    main()

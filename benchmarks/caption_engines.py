"""The caption stage's two engines side by side on CPU: the tiny Qwen2-VL (random weights), the same clips (8 frames
each, sampled from the real sample videos and prepared as caption prep prepares them) and the same prompt.

- parity: greedy answers of transformers and vLLM, text for text (where they part, the first differing character)
- parse failures per 1,000 clips, vLLM with and without structured output (the random model's free text is no JSON;
  under the schema an answer fails only when it runs out of tokens before the JSON closes)
- clips/s and output tokens/s of each engine with the answer length fixed at --tokens (transformers: batches of
  caption.batch_size, padded; vLLM: every clip in flight)

    python -m benchmarks.caption_engines [--clips 64] [--tokens 64] [--parse-clips 200]

Writes out/bench/caption_engines.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import cv2

from benchmarks.results import write_result
from curation.config import load_job
from curation.models.captioning import Captioner, CaptionFormatError, caption_videos
from curation.models.runtime import go_offline
from curation.models.vllm_engine import VllmCaptioner
from curation.video.frames import encode_image, fit_pixels
from tiny_models.curation_models import save_tiny_models, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
FRAMES = 8


def sample_clips(n: int, max_pixels: int) -> list[list[bytes]]:
    """n clips of FRAMES JPEG frames (every 2nd frame, sized as caption prep sizes them), starting every 2nd frame
    of the sample videos, spread evenly over all of them."""
    runs = []
    for path in sorted(VIDEOS.glob("*.mp4")):
        jpegs = []
        with av.open(str(path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i >= 1200:
                    break
                if i % 2 == 0:
                    rgb = frame.to_ndarray(format="rgb24")
                    size = fit_pixels(rgb.shape[1], rgb.shape[0], max_pixels)
                    jpegs.append(encode_image(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), ".jpg", 90))
        runs += [jpegs[s : s + FRAMES] for s in range(len(jpegs) - FRAMES + 1)]
    assert len(runs) >= n, f"{len(runs)} clips in {VIDEOS}, {n} asked"
    step = len(runs) / n
    return [runs[int(i * step)] for i in range(n)]


def first_difference(a: str, b: str) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="clips for parity and throughput")
    parser.add_argument("--tokens", type=int, default=64, help="answer length of the throughput runs")
    parser.add_argument("--parity-tokens", type=int, default=32, help="max_new_tokens of the parity run")
    parser.add_argument("--parse-clips", type=int, default=200, help="clips per parse-failure run")
    parser.add_argument("--parse-tokens", type=int, default=256, help="max_new_tokens of the parse-failure runs")
    args = parser.parse_args()
    go_offline()
    paths = save_tiny_models(Path(tempfile.mkdtemp(prefix="caption-engines-")))
    cfg = load_job(None, [*tiny_overrides(paths), f"caption.num_frames={FRAMES}", "caption.retries=0",
                          "caption.engine=vllm", "caption.vllm.cpu_kv_cache_gb=2", "caption.vllm.max_model_len=2048",
                          "caption.vllm.max_num_seqs=64", "caption.vllm.structured_output=false"],
                   input="-", output="-").caption
    # Three disjoint sets: vLLM's prefix cache would otherwise serve a clip's video tokens from an earlier run.
    clips = sample_clips(2 * args.clips + args.parse_clips, cfg.max_pixels)
    parity_set, parse_set, speed_set = clips[: args.clips], clips[args.clips : -args.clips], clips[-args.clips :]
    hf = Captioner.load(cfg, "cpu")
    engine, start_s = timed(VllmCaptioner.load, cfg, "cpu")
    result = {"model": "tiny Qwen2-VL, random weights (tiny_models)", "frames_per_clip": FRAMES,
              "engine_start_s": round(start_s, 1), "machine_threads": __import__("os").cpu_count()}
    try:
        # Parity: greedy, free text, the same clips through both.
        cfg.max_new_tokens = args.parity_tokens
        ours = engine([engine.video(c) for c in parity_set], False)
        theirs = [a for i in range(0, len(parity_set), cfg.batch_size)
                  for a in hf([hf.video(c) for c in parity_set[i : i + cfg.batch_size]], False)]
        diffs = [(i, first_difference(a, b)) for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
        result["parity"] = {"clips": len(parity_set), "max_new_tokens": args.parity_tokens,
                            "identical": len(parity_set) - len(diffs), "first_differences": diffs[:10],
                            "example": {"vllm": ours[0], "transformers": theirs[0]}}

        # Parse failures with and without the schema.
        cfg.max_new_tokens = args.parse_tokens
        parse = {}
        for structured in (False, True):
            cfg.vllm.structured_output = structured
            truncated = engine.usage["truncated"]
            results = caption_videos(engine, [engine.video(c) for c in parse_set], retries=0)
            failed = sum(isinstance(r, CaptionFormatError) for r in results)
            parse["structured" if structured else "free"] = {
                "clips": len(parse_set), "failed": failed, "per_1000": round(1000 * failed / len(parse_set), 1),
                "answers_cut_at_max_new_tokens": engine.usage["truncated"] - truncated}
        result["parse_failures"] = {"max_new_tokens": args.parse_tokens, **parse}
        cfg.vllm.structured_output = False

        # Throughput at a fixed answer length.
        cfg.max_new_tokens = args.tokens
        hf.model.generation_config.min_new_tokens = args.tokens
        request = engine.request
        engine.request = lambda frames, sample: {**request(frames, sample), "min_tokens": args.tokens}
        _, hf_s = timed(lambda: [hf([hf.video(c) for c in speed_set[i : i + cfg.batch_size]], False)
                                 for i in range(0, len(speed_set), cfg.batch_size)])
        before = dict(engine.usage)
        _, vllm_s = timed(lambda: engine([engine.video(c) for c in speed_set], False))
        used = {k: engine.usage[k] - before[k] for k in before}
        tokens = used["completion_tokens"]
        assert tokens == len(speed_set) * args.tokens, (tokens, len(speed_set) * args.tokens)
        result["throughput"] = {
            "clips": len(speed_set), "answer_tokens": args.tokens,
            "transformers": {"batch_size": cfg.batch_size, "clips_per_s": round(len(speed_set) / hf_s, 2),
                             "output_tokens_per_s": round(tokens / hf_s, 1)},
            "vllm": {"in_flight": len(speed_set), "clips_per_s": round(len(speed_set) / vllm_s, 2),
                     "output_tokens_per_s": round(tokens / vllm_s, 1)},
            "vllm_over_transformers": round(hf_s / vllm_s, 2),
            # clips the engine had not seen: what is cached is the instruction every prompt starts with
            "prefix_cache": {"prompt_tokens": used["prompt_tokens"], "cached_tokens": used["cached_tokens"]},
        }
    finally:
        engine.close()
    write_result("caption_engines", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

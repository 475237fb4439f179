#!/usr/bin/env bash
# One GPU, under 10 minutes: the numbers the project has never measured, as one JSON file.
#
#   bash benchmarks/gpu_check.sh            # one CUDA GPU (H100/H200 class: the full DiT needs ~60 GiB with AC)
#   bash benchmarks/gpu_check.sh --smoke    # every piece's code path on CPU at the tiny preset (a minute or two)
#
# 1. model:    the full DiT (5.57 B, 49x480x720, 17,776 tokens) fwd+bwd in bf16, with and without per-block
#              activation checkpointing: seconds, TFLOP/s, MFU (analytic FLOPs x3 / peak), peak memory, OOM; and
#              with it at 17 and 33 frames, the training window's shorter buckets (benchmarks/model_bench.py --gpu-only)
# 2. generate: seconds per video at the full preset's shapes with random weights (Qwen2-VL-7B + AlignerNet +
#              DiT bf16 + CogVideoX VAE; 2 subjects, batched CFG): fixed cost, seconds per step, the 50-step
#              total, peak memory (benchmarks/generate_bench.py)
# 3. stages:   the curation model stages' GPU throughput with real-size models (benchmarks/model_stages_bench.py
#              --gpu; on --smoke its CPU mode with the tiny models); the caption stage on both engines, with the
#              GPU's busy share, where .venv-vllm holds a GPU build of vLLM (without one: transformers only)
# 4. transnet: TransNetV2's predicted frames/s on the GPU (1 and 64 windows a batch: scenes.num_gpus) beside the CPU's
#              runtimes on one core (benchmarks/clean_clips.py --network-only)
# Each piece has its own time limit (150 + 270 + 200 (360 with vLLM) + 60 s); one that fails or runs out is recorded as such and
# the others still run.
# Writes out/bench/gpu_check.json (and each piece's own out/bench/*.json); prints it at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=out/bench/gpu_check
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

if [ $SMOKE = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: run with --smoke for the CPU check" >&2
  exit 2
fi

# The tiny checkpoints (processors and tokenizers for the random full-size models), written once.
TINY=$OUT/tiny_models
CKPT=$TINY/cinema
[ -d "$CKPT/qwen2vl" ] || "$PY" -m tiny_models "$TINY" >"$OUT/tiny_models.log" 2>&1 || { cat "$OUT/tiny_models.log" >&2; exit 2; }

piece() {  # name, time limit (s), command...: runs it, keeps its log and exit status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*" >&2
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"rc\": $rc, \"wall_s\": $((SECONDS - start))}" >"$OUT/$name.status.json"
  [ $rc = 0 ] || { echo "   $name failed (rc $rc), last lines:" >&2; tail -5 "$OUT/$name.log" >&2; }
}

if [ $SMOKE = 1 ]; then
  piece model 300 "$PY" -m benchmarks.model_bench --gpu-only --device cpu --preset tiny --reps 1 --frames 1 \
    --out "$OUT/model.json"
  piece generate 300 "$PY" -m benchmarks.generate_bench --preset tiny --device cpu --steps 2 --checkpoints "$CKPT" \
    --out "$OUT/generate.json"
  piece stages 600 "$PY" -m benchmarks.model_stages_bench
  STAGES_JSON=out/bench/model_stages.json
  piece transnet 120 "$PY" -m benchmarks.clean_clips --network-only --out "$OUT/transnet.json"
else
  piece model 150 "$PY" -m benchmarks.model_bench --gpu-only --frames 17 33 --out "$OUT/model.json"
  piece generate 270 "$PY" -m benchmarks.generate_bench --checkpoints "$CKPT" --out "$OUT/generate.json"
  # 32 clips, caption batches of 8 and 16: the stages' numbers in three minutes (their defaults take longer).
  # With a GPU build of vLLM in .venv-vllm (caption.vllm.python), the same weights and clips on the vLLM engine
  # too: saving the 7B weights, the engine's start and its run add about two and a half minutes.
  VLLM=()
  .venv-vllm/bin/python -c "import vllm, torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
    && VLLM=(--vllm)
  piece stages $((200 + ${#VLLM[@]} * 160)) "$PY" -m benchmarks.model_stages_bench --gpu --clips 32 --batch-sizes 8 16 "${VLLM[@]}"
  STAGES_JSON=out/bench/model_stages.json
  piece transnet 60 "$PY" -m benchmarks.clean_clips --network-only --out "$OUT/transnet.json"
fi

"$PY" - "$OUT" "$STAGES_JSON" "$SMOKE" <<'EOF'
import json, sys
from pathlib import Path

out, stages, smoke = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"

def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

report = {"smoke": smoke}
for name, path in (("model", out / "model.json"), ("generate", out / "generate.json"), ("stages", stages),
                   ("transnet", out / "transnet.json")):
    status = load(out / f"{name}.status.json") or {}
    result = load(path) if status.get("rc") == 0 else None
    if name == "model" and result is not None:
        result = result.get("gpu")
    report[name] = {**status, "result": result}
    if result is None:
        report[name]["log_tail"] = (out / f"{name}.log").read_text(errors="replace")[-2000:]
(out.parent / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
failed = [k for k in ("model", "generate", "stages", "transnet") if report[k].get("rc") != 0]
print(f"wrote {out.parent / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
sys.exit(1 if failed else 0)
EOF

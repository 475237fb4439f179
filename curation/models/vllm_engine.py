"""caption.engine vllm: a ``vllm serve`` process per captioning actor, on loopback, and a client that keeps every
clip of a batch in flight, so the engine's continuous batching fills the GPU instead of fixed padded batches.

vLLM runs in its own Python environment (``caption.vllm.python``), since it pins its own torch and transformers.
The actor starts the server on a free loopback port with the actor's GPUs (CUDA_VISIBLE_DEVICES is inherited),
waits for /health, and stops it at teardown. Each clip is one chat request whose video is the clip's JPEG frames
(``data:video/jpeg;base64,...``, the bytes caption prep made), with the answer held to CAPTION_SCHEMA.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.typed_config import ConfigError

from curation.config import CaptionConfig
from curation.models.captioning import CAPTION_SCHEMA, prompt_content
from curation.video.frames import decode_image

_SERVED_NAME = "caption"
_LOG_TAIL = 3000  # characters of the server's log shown when it fails
# Runs in the engine's interpreter, at the head of the server's own process group, the API server its child. Its
# guard (forked: not a child of the worker, so it outlives a worker whose children Ray kills on exit) takes the
# whole group down when the worker is gone: the API server, the engine core and its workers (vLLM's engine core
# outlives a killed API server). When the server exits, what it left behind goes with it.
_WATCHDOG = r"""
import os, signal, subprocess, sys, time
worker = int(sys.argv[1])
server = subprocess.Popen(sys.argv[2:])
if os.fork() == 0:
    while True:
        time.sleep(1)
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            os.killpg(0, signal.SIGKILL)
server.wait()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)
sys.exit(server.returncode)
"""


class EngineError(ConnectionError):
    """The engine stopped answering: the machine's fault, not the clip's (the source is processed again)."""


def engine_python(cfg: CaptionConfig) -> Path:
    return Path(cfg.vllm.python).absolute()  # load_job made it absolute where the job started


def check_engine(cfg: CaptionConfig) -> None:
    """ConfigError unless ``caption.vllm.python`` exists and imports vLLM (before Ray starts)."""
    python = engine_python(cfg)
    if not python.is_file():
        raise ConfigError(f"caption.vllm.python: no such interpreter: {python} (make setup builds .venv-vllm; on a "
                          "GPU node install vllm into an environment there and point at its python)")
    probe = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True, env=_engine_env(cfg, "cpu"))
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"caption.vllm.python: {python} cannot import vllm: {last}")


def _engine_env(cfg: CaptionConfig, device: str) -> dict[str, str]:
    # The actor's own environment minus what points at the project's packages (its torch is not vLLM's).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.vllm.cpu_kv_cache_gb)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """One ``vllm serve`` process for the model ``cfg.model``, bound to 127.0.0.1."""

    def __init__(self, cfg: CaptionConfig, device: str):
        self.cfg, self.device = cfg, device
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fd, log = tempfile.mkstemp(prefix="vllm-caption-", suffix=".log")
        os.close(fd)  # start() opens it by name
        self.log = Path(log)
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        v = self.cfg.vllm
        dtype = self.cfg.dtype if self.device.startswith("cuda") else "float32"
        # The OpenAI-compatible server module: the ``vllm serve`` CLI looks up a distribution named vllm, which
        # the CPU build (vllm-cpu) is not.
        cmd = [str(engine_python(self.cfg)), "-m", "vllm.entrypoints.openai.api_server", "--model", self.cfg.model,
               "--served-model-name", _SERVED_NAME, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", dtype, "--max-model-len", str(v.max_model_len), "--max-num-seqs", str(v.max_num_seqs),
               "--limit-mm-per-prompt", json.dumps({"image": 0, "video": 1}),
               # Every frame the stage sends (vLLM keeps only the first 32 of a JPEG video otherwise).
               "--media-io-kwargs", json.dumps({"video": {"num_frames": -1}}),
               "--enable-prefix-caching", "--enable-prompt-tokens-details", "--disable-uvicorn-access-log",
               # Free whitespace lets a constrained model pad its answer with blanks until max_tokens.
               "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
        if self.device.startswith("cuda"):
            cmd += ["--gpu-memory-utilization", str(v.gpu_memory_utilization),
                    "--tensor-parallel-size", str(v.tensor_parallel_size)]
        if v.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + list(v.extra_args)

    def start(self) -> "VllmServer":
        python, *server = self.command()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([python, "-c", _WATCHDOG, str(os.getpid()), python, *server], stdout=log,
                                         stderr=subprocess.STDOUT, env=_engine_env(self.cfg, self.device),
                                         start_new_session=True)
        atexit.register(self.stop)  # a worker that exits without teardown takes its engine with it
        deadline = time.monotonic() + self.cfg.vllm.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM engine for {self.cfg.model} exited with code {self.proc.returncode} "
                                   f"before it was ready; its log ({self.log}) ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"the vLLM engine for {self.cfg.model} was not ready within "
                           f"caption.vllm.startup_timeout_s={self.cfg.vllm.startup_timeout_s:g}; its log "
                           f"({self.log}) ends:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-_LOG_TAIL:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """The whole process group at once: the engine keeps nothing worth a graceful shutdown."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.log.unlink(missing_ok=True)


class VllmCaptioner:
    """``generate(videos, sample)`` over a running VllmServer: each video is a clip's list of JPEG frames; every
    clip of the call is one request, all in flight at once (up to caption.vllm.max_num_seqs)."""

    def __init__(self, server: VllmServer, cfg: CaptionConfig):
        self.server, self.cfg = server, cfg
        self.pool = ThreadPoolExecutor(max_workers=cfg.vllm.max_num_seqs, thread_name_prefix="vllm-client")
        # Counted over the engine's life; truncated: answers cut at max_new_tokens.
        self.usage = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0, "truncated": 0}
        self._lock = threading.Lock()  # the pool's threads add to usage

    @classmethod
    def load(cls, cfg: CaptionConfig, device: str) -> "VllmCaptioner":
        return cls(VllmServer(cfg, device).start(), cfg)

    @staticmethod
    def video(jpegs: list[bytes]) -> list[bytes]:
        for frame in jpegs:
            decode_image(frame)  # a frame that cannot be read fails its clip here, not inside the engine
        return jpegs

    def __call__(self, videos: list[list[bytes]], sample: bool) -> list[str | Exception]:
        return list(self.pool.map(lambda frames: self._ask(frames, sample), videos))

    def request(self, frames: list[bytes], sample: bool) -> dict:
        url = "data:video/jpeg;base64," + ",".join(base64.b64encode(f).decode() for f in frames)
        body = {"model": _SERVED_NAME, "max_tokens": self.cfg.max_new_tokens,
                "messages": [{"role": "user", "content": prompt_content(self.cfg, {"type": "video_url", "video_url": {"url": url}})}],
                # the transformers engine's settings: greedy, and for retries the same draw
                **({"temperature": 0.7, "top_p": 0.9} if sample else {"temperature": 0.0})}
        if self.cfg.vllm.structured_output:
            body["structured_outputs"] = {"json": CAPTION_SCHEMA}
        return body

    def _ask(self, frames: list[bytes], sample: bool) -> str | Exception:
        data = json.dumps(self.request(frames, sample)).encode()
        req = urllib.request.Request(f"{self.server.url}/v1/chat/completions", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                answer = json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode(errors="replace")
            if 400 <= e.code < 500:  # this clip's request was refused: the clip's failure only
                return ValueError(f"the vLLM engine refused the clip (HTTP {e.code}): {detail}")
            raise self._down(f"HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise self._down(str(e)) from None
        usage = answer.get("usage") or {}
        with self._lock:
            self.usage["requests"] += 1
            self.usage["prompt_tokens"] += usage.get("prompt_tokens", 0)
            self.usage["completion_tokens"] += usage.get("completion_tokens", 0)
            self.usage["cached_tokens"] += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            self.usage["truncated"] += answer["choices"][0].get("finish_reason") == "length"
        return answer["choices"][0]["message"]["content"] or ""

    def _down(self, what: str) -> EngineError:
        state = "is running" if self.server.alive() else f"exited; its log ends:\n{self.server.log_tail()}"
        return EngineError(f"the vLLM engine at {self.server.url} did not answer ({what}); the engine {state}")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.server.stop()

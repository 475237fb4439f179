"""What every model stage needs before loading a model: the libraries' offline switches and a device.

Call ``go_offline()`` before importing transformers or ultralytics (both read these variables at import time):
nothing may download weights, fonts or tokenizers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Project-local (out/ is ignored by git); a user may point YOLO_CONFIG_DIR elsewhere.
_YOLO_CONFIG_DIR = Path(__file__).resolve().parents[1] / "out" / "ultralytics-config"


def go_offline() -> None:
    # Offline, and without a "Loading weights" progress bar from every worker.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ[name] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")  # no per-image log lines from every worker
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(_YOLO_CONFIG_DIR)))
    # ultralytics fetches Arial.ttf for plotting unless a TTF is already there; matplotlib ships DejaVuSans.
    font = config_dir / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        import matplotlib

        font.parent.mkdir(parents=True, exist_ok=True)
        tmp = font.with_name(f"Arial.{os.getpid()}.tmp")  # workers start together: copy, then rename atomically
        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", tmp)
        os.replace(tmp, font)


def device_for(num_gpus: float) -> str:
    """A stage given GPUs runs on CUDA when there is one; tests and CPU-only machines run the same code on CPU. A
    stage given none does not import torch to find that out."""
    if num_gpus <= 0:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_threads() -> int:
    """The threads a worker's own compute may use: Ray sets OMP_NUM_THREADS to a worker's CPUs (as torch reads
    it); elsewhere, every CPU this process may run on."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else len(os.sched_getaffinity(0))


def load_state_dict(path: str) -> dict:
    """A state dict from ``.safetensors`` or from a torch file read with ``weights_only`` (tensors only: never
    arbitrary pickled objects). Any failure names the file."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"weights file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - a corrupt or hostile file: say which, not a deep traceback
        raise ValueError(f"cannot read weights from {path}: {type(e).__name__}: {e}") from None

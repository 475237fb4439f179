"""Training metrics: a line to stdout and TensorBoard scalars every N steps, and a loss-curve PNG at the end.

MFU = achieved model FLOPs / peak FLOPs of the device. Model FLOPs count the DiT's forward and backward (3x the
forward) whatever activation checkpointing recomputes, as is usual for MFU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Dense bf16 peak (no sparsity) of the GPUs people train on; other devices report no MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


@dataclass
class Window:
    """Accumulates over the steps between two reports."""

    steps: int = 0
    samples: int = 0
    tokens: int = 0
    flops: float = 0.0
    data_wait_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)


# TensorBoard groups scalars by the prefix of their tag.
_GROUPS = {"loss": "loss/train", "grad_norm": "loss/grad_norm", "lr": "optim/lr"}


def tb_tag(key: str) -> str:
    if key in _GROUPS:
        return _GROUPS[key]
    if key.startswith("val_loss"):
        return "loss/validation" + key.removeprefix("val_loss")
    return f"data/{key.removeprefix('data_')}" if key.startswith("data") else f"perf/{key}"


def flat_hparams(config: dict, prefix: str = "") -> dict:
    """The config's scalar leaves as dotted keys (lists as text): what TensorBoard's HParams view takes."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, f"{key}."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        elif v is not None:
            out[key] = json.dumps(v)
    return out


class Metrics:
    def __init__(self, out_dir: str | Path, every: int, rank: int, world_size: int, device: torch.device,
                 tensorboard: bool = True, config: dict | None = None):
        self.out_dir, self.every, self.rank, self.world_size, self.device = Path(out_dir), every, rank, world_size, device
        self.history: list[dict] = []
        self.window = Window()
        self.peak = peak_flops(device)
        self.tb = None
        if rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if config is not None:  # the resolved config, every default filled in, beside the metrics it made
                import yaml

                (self.out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                from torch.utils.tensorboard.summary import hparams

                self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))
                if config is not None:
                    # In this run's own event file (add_hparams would start another run), the loss its metric.
                    for summary in hparams(flat_hparams(config), {"loss/train": float("nan")}):
                        self.tb.file_writer.add_summary(summary)

    def step(self, step: int, loss: float, samples: int, tokens: int, flops: float, data_wait_s: float,
             extra: dict | None = None) -> dict | None:
        """Record one optimizer step (this rank's numbers); report every ``every`` steps. ``loss`` must already be
        averaged over ranks; throughput is scaled to the whole job."""
        w = self.window
        w.steps += 1
        w.samples += samples
        w.tokens += tokens
        w.flops += flops
        w.data_wait_s += data_wait_s
        w.losses.append(loss)
        if step % self.every:
            return None
        elapsed = time.perf_counter() - w.start
        row = {
            "step": step,
            "loss": sum(w.losses) / len(w.losses),
            "samples_per_s": w.samples * self.world_size / elapsed,
            "tokens_per_s": w.tokens * self.world_size / elapsed,
            "data_wait": w.data_wait_s / elapsed,
            "step_s": elapsed / w.steps,
            **(extra or {}),
        }
        if self.device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.peak:
            row["mfu"] = w.flops / elapsed / self.peak
        self.history.append(row)
        self.window = Window()
        if self.rank == 0:
            print(" ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
            if self.tb is not None:
                for k, v in row.items():
                    if k != "step" and isinstance(v, (int, float)):
                        self.tb.add_scalar(tb_tag(k), v, step)
        return row

    def record(self, name: str, step: int, values: dict) -> None:
        """A row of another kind (``validation``, ``data``) at ``step``: printed, appended to ``<name>.jsonl`` at once
        and its numbers shown in TensorBoard (rank 0)."""
        if self.rank != 0:
            return
        row = {"step": step, **values}
        print(f"{name}: " + " ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
        with open(self.out_dir / f"{name}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(tb_tag(k), v, step)

    def image(self, tag: str, path: Path, step: int) -> None:
        """A PNG written by rank 0 (a validation sample's contact sheet), shown in TensorBoard's images."""
        if self.rank == 0 and self.tb is not None:
            import numpy as np
            from PIL import Image

            with Image.open(path) as image:
                self.tb.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def close(self) -> Path | None:
        """Write metrics.jsonl and the loss curve PNG (rank 0); returns the PNG's path."""
        if self.rank != 0:
            return None
        if self.tb is not None:
            self.tb.close()
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            for row in self.history:
                f.write(json.dumps(row) + "\n")
        return loss_curve(self.out_dir / "metrics.jsonl", self.out_dir / "loss_curve.png")


def loss_curve(jsonl: Path, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)

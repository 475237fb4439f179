"""Run under torchrun with 2 ranks: one FSDP2 step on each rank's half of a fixed global batch, then rank 0 checks
the gathered gradients against a single-process step on the whole batch. Prints GRADS-MATCH max_diff=..."""

from __future__ import annotations

import sys

import torch
from torch import nn

from cinema_model.config import preset
from cinema_model.model import CinemaModel
from training.batch import sample_generators
from training.checkpoint import clean_fqn
from training.parallelize import parallelize
from training.trainer import distributed

from .model_fixtures import subject_batch


def step_grads(model: CinemaModel, trained: nn.Module, batch: dict, first: int) -> dict[str, torch.Tensor]:
    gens = sample_generators(0, 1, 0, first, len(batch["captions"]))
    model.loss(batch, gens)["loss"].backward()
    return {k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
            for k, p in trained.named_parameters()}


def main(checkpoints: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    cfg = preset("tiny", checkpoints, ["flow.condition_dropout=0.5"])  # dropout on: its draws must match too
    batch = subject_batch([2, 0, 3, 1])
    with distributed():
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(0)
        model = CinemaModel(cfg)
        trained = nn.ModuleDict(model.trainable_parts())
        names = [k for k, _ in trained.named_parameters()]
        reference = None
        if rank == 0:
            torch.manual_seed(0)
            single = CinemaModel(cfg)
            reference = step_grads(single, nn.ModuleDict(single.trainable_parts()), batch, 0)
        parallelize(model, init_device_mesh("cpu", (world,)), activation_checkpointing=True, compile=False,
                    param_dtype=torch.float32)
        n = len(batch["captions"]) // world
        local = {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}
        grads = step_grads(model, trained, local, rank * n)
        if rank == 0:
            clean = {clean_fqn(k): v for k, v in grads.items()}
            assert sorted(clean) == sorted(reference), "parameter names differ"
            diff = max(float((clean[k] - reference[k]).abs().max()) for k in reference)
            scale = max(float(reference[k].abs().max()) for k in reference)
            print(f"GRADS-MATCH max_diff={diff:.3e} scale={scale:.3e} params={len(names)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

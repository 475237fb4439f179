"""Run under torchrun with 2 ranks.

``grads``: one FSDP2 step on each rank's half of a fixed global batch, then rank 0 checks the gathered gradients
against a single-process step on the whole batch. Prints GRADS-MATCH max_diff=...

``meta CHECKPOINTS ALIGNER_FILE``: the trainer's build (meta device, fully_shard, materialise the shards) with the
frozen MLLM sharded per decoder layer, against a plain (eager, unsharded) build on rank 0: every trained weight,
gathered, must be equal (the seeded init, and the CogVideoX conversion plus the pretrained AlignerNet), and the loss
on the same samples must agree. Prints META-MATCH ..."""

from __future__ import annotations

import sys

import torch
from torch import nn

from cinema_model.config import preset
from cinema_model.model import CinemaModel
from cinema_model.weights import clean_name
from training.batch import sample_generators
from training.materialize import materialize_shards
from training.parallelize import parallelize
from training.trainer import distributed

from .model_fixtures import subject_batch, trained_weights


def step_grads(model: CinemaModel, trained: nn.Module, batch: dict, first: int) -> dict[str, torch.Tensor]:
    gens = sample_generators(0, 1, 0, first, len(batch["captions"]))
    model.loss(batch, gens)["loss"].backward()
    return {k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
            for k, p in trained.named_parameters()}


def grads(checkpoints: str) -> None:
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
            clean = {clean_name(k): v for k, v in grads.items()}
            assert sorted(clean) == sorted(reference), "parameter names differ"
            diff = max(float((clean[k] - reference[k]).abs().max()) for k in reference)
            scale = max(float(reference[k].abs().max()) for k in reference)
            print(f"GRADS-MATCH max_diff={diff:.3e} scale={scale:.3e} params={len(names)}", flush=True)


def _full_state(model: CinemaModel) -> dict[str, torch.Tensor]:
    return {clean_name(k): (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in trained_weights(model).items()}


def meta(checkpoints: str, aligner_file: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    loaded = ["flow.condition_dropout=0.5", f"dit.init_from={checkpoints}/cogvideox", f"aligner.pretrained={aligner_file}"]
    configs = {"seeded": preset("tiny", checkpoints, ["flow.condition_dropout=0.5"]),
               "loaded": preset("tiny", checkpoints, loaded)}
    batch = subject_batch([2, 0, 3, 1])
    with distributed():
        rank, world = dist.get_rank(), dist.get_world_size()
        mesh = init_device_mesh("cpu", (world,))
        for name, cfg in configs.items():
            model = CinemaModel(cfg, trained_on_meta=True, seed=7)
            assert all(p.is_meta for p in model.trainable_parameters())
            parallelize(model, mesh, activation_checkpointing=True, compile=False, param_dtype=torch.float32,
                        encoders="sharded")
            materialize_shards(model, torch.device("cpu"))
            local = {clean_name(k): p for k, p in trained_weights(model).items()}
            sharded = sum(1 for p in local.values() if hasattr(p, "full_tensor"))
            mllm_sharded = all(hasattr(p, "full_tensor") for p in model.mllm.parameters())
            gathered = _full_state(model)
            loss = model.loss(batch, sample_generators(0, 1, 0, 0, 4))["loss"].item()
            if rank == 0:
                eager = CinemaModel(cfg, seed=7)
                reference = {k: v.detach() for k, v in trained_weights(eager).items()}
                assert sorted(gathered) == sorted(reference), "parameter names differ"
                unequal = [k for k in reference if not torch.equal(gathered[k], reference[k])]
                ref_loss = eager.loss(batch, sample_generators(0, 1, 0, 0, 4))["loss"].item()
                print(f"META-MATCH {name} keys={len(reference)} sharded={sharded} mllm_sharded={mllm_sharded} "
                      f"unequal={len(unequal)} loss={loss:.8f} ref_loss={ref_loss:.8f} first_unequal={unequal[:3]}",
                      flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "meta":
        meta(*sys.argv[2:])
    else:
        grads(sys.argv[-1])

"""AdamW over the trained parameters and its learning-rate schedule, stepped one of two ways.

After the backward (the default): one AdamW over all parameters, their gradients first clipped to a global norm. At
that moment every parameter's fp32 gradient is alive beside AdamW's two moments: a rank holds four times its
parameter shard.

In the backward (``optim.step_in_backward``, torchtitan's optimizer in backward): one AdamW per parameter, stepped by
the post-accumulate-grad hook FSDP2 calls as soon as that parameter's sharded gradient is reduced, the gradient freed
right after. A rank holds its parameters, their moments and one FSDP group's gradients: about three times its shard.
The update is the same AdamW with the same learning rate; what this gives up is clipping to a global norm (no
parameter may wait for the others) and gradient accumulation. The global norm is still measured for the metrics.

Either way the checkpoint holds the same entries: AdamW's state and hyperparameters under the parameters' names
(``training.checkpoint``) and one schedule (every per-parameter schedule is the same function of the step), so a run
can switch between the two on a resume.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from cinema_model.weights import clean_name

from .config import OptimConfig


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio`` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(trained: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only, none on norms, biases (1-D) and the learned tokens a
    module lists in ``no_weight_decay`` (AlignerNet's queries)."""
    exempt = {clean_name(f"{name}.{p}") for name, module in trained.named_modules()
              for p in getattr(module, "no_weight_decay", ())}
    decay, no_decay = [], []
    for name, p in trained.named_parameters():
        (no_decay if p.ndim < 2 or clean_name(name) in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Schedule:
    """The schedules of all optimizers, saved and loaded as one (they are the same function of the step)."""

    def __init__(self, schedulers: list[LambdaLR]):
        self.schedulers = schedulers

    def step(self) -> None:
        for s in self.schedulers:
            s.step()

    def get_last_lr(self) -> list[float]:
        return self.schedulers[0].get_last_lr()

    def state_dict(self) -> dict:
        return self.schedulers[0].state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Into any optimizer layout: every param group starts from optim.lr, so the per-group lists hold one value
        however many groups the run that saved them had."""
        for s in self.schedulers:
            groups = len(s.optimizer.param_groups)
            s.load_state_dict({k: v[:1] * groups if k in ("base_lrs", "_last_lr") else v for k, v in state.items()})


class Optimizers:
    """``optimizers`` (one, or one per parameter) and ``schedule`` for the checkpoint; ``step`` after the backward."""

    def __init__(self, trained: nn.Module, cfg: OptimConfig, total_steps: int):
        self.cfg = cfg
        groups = param_groups(trained, cfg.weight_decay)
        if cfg.step_in_backward:
            self.optimizers = [torch.optim.AdamW([{**group, "params": [p]}], lr=cfg.lr, betas=cfg.betas)
                               for group in groups for p in group["params"]]
            for opt in self.optimizers:
                opt.param_groups[0]["params"][0].register_post_accumulate_grad_hook(self._stepper(opt))
        else:
            self.optimizers = [torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)]
        self.params = [p for group in groups for p in group["params"]]
        self._sum_sq: torch.Tensor | None = None  # in the backward: the squared gradient norm of this rank's shards
        self.schedule = Schedule([LambdaLR(opt, lambda s: lr_lambda(s, cfg.warmup_steps, total_steps,
                                                                     cfg.min_lr_ratio)) for opt in self.optimizers])

    def _stepper(self, opt: torch.optim.Optimizer):
        def step_now(param: torch.Tensor) -> None:
            grad = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad
            sq = grad.detach().double().square().sum()
            self._sum_sq = sq if self._sum_sq is None else self._sum_sq + sq
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step_now

    def step(self) -> torch.Tensor | None:
        """Apply this step's update (in the backward: already applied) and advance the schedule; returns the global
        gradient norm before clipping, or None where it was not computed (no clipping after the backward)."""
        if self.cfg.step_in_backward:
            norm = (self._sum_sq if self._sum_sq is not None
                    else torch.zeros((), dtype=torch.float64, device=self.params[0].device))
            self._sum_sq = None
            if dist.is_initialized():  # every parameter is sharded: the ranks' shards sum to the whole
                dist.all_reduce(norm)
            norm = norm.sqrt()
        else:
            norm = (torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip) if self.cfg.grad_clip else None)
            self.optimizers[0].step()
            self.optimizers[0].zero_grad(set_to_none=True)
        self.schedule.step()
        return norm

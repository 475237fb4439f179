"""The training loop: both stages (``aligner``, ``cinema``) on one code path, on CPU (gloo) or GPUs (NCCL)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from cinema_model.config import latent_frames, preset
from cinema_model.flops import dit_train_flops
from cinema_model.model import CinemaModel
from cinema_model.weights import clean_name
from common.typed_config import to_dict

from .batch import model_batch, sample_generators
from .checkpoint import Checkpointer, TrainState, export_consolidated, recorded_step
from .config import JobError, TrainJob
from .data.features import FeatureSet, open_features
from .data.fit import dataset_fit
from .data.loader import ShardLoader
from .data.shard_urls import list_shards
from .materialize import materialize_shards
from .metrics import Metrics
from .optimizer import Optimizers
from .parallelize import parallelize
from .validation import Validator

log = logging.getLogger("training")


@contextmanager
def distributed():
    """The process group torchrun describes in the environment; a plain `python -m training` is a world of one."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        dist.barrier()  # not after an error: the other ranks may be waiting in another collective
    finally:
        dist.destroy_process_group()


def on_every_rank(fn):
    """Run a setup step on every rank. A JobError on any rank becomes one JobError on all of them, with each
    distinct message once, so that rank 0 alone reports it."""
    try:
        result, error = fn(), None
    except JobError as e:
        result, error = None, str(e)
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)  # between our own ranks only
    failed = list(dict.fromkeys(e for e in errors if e))
    if failed:
        raise JobError("; ".join(failed), shared=True)
    return result


class Ema:
    """Exponential moving average of the trained weights, kept in each parameter's own (sharded) layout, under the
    parameters' own names (what activation checkpointing and compile wrap around them left out)."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def restart(self) -> None:
        """Start from the current weights (a resume from a checkpoint saved without an EMA)."""
        for k, p in self.params.items():
            self.shadow[k].copy_(p.detach())

    @torch.no_grad()
    def update(self) -> None:
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach(), 1 - self.decay)


def build(job: TrainJob, device: torch.device, features: FeatureSet | None = None,
          initial_weights: bool = True) -> tuple[CinemaModel, nn.ModuleDict]:
    """The model as torchtitan builds one: frozen parts loaded once per rank in their dtype onto ``device``, trained
    parts built on the meta device, sharded, then materialised shard by shard with their initial weights (seeded
    init, CogVideoX, a pretrained AlignerNet) read straight into the shards: no rank holds a full copy of a trained
    part. ``initial_weights=False`` (a resume) skips those loads: the checkpoint fills every trained weight."""
    cfg = preset(job.model.preset, job.model.checkpoints, job.model.overrides)
    torch.manual_seed(job.seed)
    # The init is keyed by (seed, parameter name): every rank draws the same values for the shard it keeps.
    # On precomputed features no encoder is loaded; the AlignerNet takes the features' width.
    model = CinemaModel(cfg, job.stage, device=device, trained_on_meta=True, seed=job.seed,
                        encoders=features is None,
                        mllm_hidden_size=features.hidden_size if features is not None else None)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    parallelize(model, mesh, activation_checkpointing=job.parallel.activation_checkpointing,
                compile=job.parallel.compile, param_dtype=getattr(torch, job.parallel.param_dtype),
                encoders=job.model.encoders)
    materialize_shards(model, device, initial_weights=initial_weights)
    return model, nn.ModuleDict(model.trainable_parts())


def _per_sample_cost(model: CinemaModel, batch: dict, stage: str) -> tuple[int, float]:
    """(tokens, training FLOPs) of one sample of this batch: the DiT's text + visual tokens (the aligner stage
    counts caption tokens and reports no FLOPs)."""
    cfg = model.cfg
    if stage == "aligner":
        return cfg.t5.max_length, 0.0
    if "latents" in batch:  # precomputed features
        t, _, h, w = batch["latents"].shape[1:]
    else:
        frames, _, height, width = batch["video"].shape[1:]
        t, h, w = latent_frames(frames), height // 8, width // 8
    # Subject slots are padded to the batch's largest count: the DiT computes them all.
    k = int(batch["num_subjects"].max()) if cfg.ablation.subject_tokens and len(batch["num_subjects"]) else 0
    tokens = cfg.t5.max_length + (t + k) * (h // cfg.dit.patch_size) * (w // cfg.dit.patch_size)
    return tokens, float(dit_train_flops(cfg.dit, t, h, w, cfg.t5.max_length, k))


def train(job: TrainJob) -> dict:
    """Run (or resume) a training job; returns the last metrics row."""
    with distributed() as device:
        rank, world = dist.get_rank(), dist.get_world_size()
        out = Path(job.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # First what the user may have got wrong, so that it fails in seconds. The aligner stage reads captions
        # only: no clip is decoded, none is too short.
        features = on_every_rank(lambda: _features(job)) if job.model.encoders == "precomputed" else None
        media, val = job.stage == "cinema", job.validation
        loader = on_every_rank(lambda: ShardLoader(job.data, rank, world, media=media, features=features,
                                                   holdout=val.fraction))
        fit = on_every_rank(lambda: dataset_fit(job.data, media, val.fraction, val.clips))
        if rank == 0 and fit is not None:
            log.info(fit.summary(job.data))
        validator = on_every_rank(lambda: _validator(job, fit, rank, world, out, features))
        ckpt_dir = Path(job.checkpoint.folder)
        checkpointer = Checkpointer(ckpt_dir if ckpt_dir.is_absolute() else out / ckpt_dir, job.checkpoint.keep, out)
        resume = job.checkpoint.resume
        latest = on_every_rank(lambda: checkpointer.latest(job.checkpoint.resume_from)) if resume else None
        reached = recorded_step(latest) if latest is not None else None
        if reached is not None and reached >= job.steps:
            if rank == 0:
                print(f"nothing to do: checkpoint {latest} is at step {reached} >= steps={job.steps} (raise steps "
                      "to train on)", flush=True)
            return {}
        model, trained = build(job, device, features, initial_weights=latest is None)  # a resume loads no CogVideoX
        params = {clean_name(k): p for k, p in trained.named_parameters()}
        optimizers = Optimizers(trained, job.optim, job.steps)
        ema = Ema(params, job.optim.ema_decay) if job.optim.ema_decay else None
        state = TrainState(trained, optimizers.optimizers, optimizers.schedule, rank, ema.shadow if ema else None)
        if latest is not None:
            exclude = set(job.checkpoint.exclude_from_loading)
            on_every_rank(lambda: checkpointer.load(state, latest, exclude))
            if state.saved_data is not None:
                on_every_rank(lambda: loader.load_state_dict(state.saved_data))
            if ema and not state.ema_loaded:
                ema.restart()
                if rank == 0:
                    log.info("optim.ema_decay: %s holds no EMA; it starts from the resumed weights", latest)
        metrics = Metrics(out, job.metrics.every, rank, world, device, job.metrics.tensorboard, to_dict(job))
        epochs = loader.epochs_done()
        batches = iter(loader)
        # Which samples each step saw, per rank: to audit a resume or trace a loss spike back to its clips.
        seen = open(out / f"samples-rank{rank}.jsonl", "a", buffering=1)  # line-buffered: a kill loses nothing
        model.train()
        row = None
        b = job.data.batch_size
        for step in range(state.step + 1, job.steps + 1):
            wait, tokens, flops = 0.0, 0, 0.0
            losses = []
            for micro in range(job.grad_accum):
                t0 = time.perf_counter()
                batch = next(batches)
                wait += time.perf_counter() - t0
                if job.stage == "aligner":
                    parts = model.aligner_loss(list(batch["caption"]))
                else:
                    gens = sample_generators(job.seed, step, micro, rank * b, len(batch["key"]))
                    parts = model.loss(model_batch(batch, device, features), gens)
                (parts["loss"] / job.grad_accum).backward()
                losses.append(parts["loss"].detach())
                sample_tokens, sample_flops = _per_sample_cost(model, batch, job.stage)
                tokens, flops = tokens + b * sample_tokens, flops + b * sample_flops
                seen.write(json.dumps({"step": step, "micro": micro, "keys": list(batch["key"])}) + "\n")
            grad_norm = optimizers.step()
            if ema:
                ema.update()
            # One all-reduce (a sum: gloo has no AVG) for the loss, the tokens and FLOPs (ranks hold other buckets)
            # and the loader counters of every rank.
            totals = torch.tensor([float(torch.stack(losses).mean()), tokens, flops, *_counters(loader)],
                                  dtype=torch.float64, device=device)
            dist.all_reduce(totals)
            loss, tokens, flops, *data = totals.tolist()
            data = dict(zip(DATA_COUNTERS, map(int, data)))
            extra = {"lr": optimizers.schedule.get_last_lr()[0],
                     "data_skipped": sum(data[k] for k in SKIP_REASONS), "data_retries": data["read_retries"]}
            if grad_norm is not None:
                extra["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            row = metrics.step(step, loss / world, b * job.grad_accum, tokens / world, flops / world, wait,
                               extra) or row
            state.step = step
            # An epoch ends once every loader worker of every rank has finished it.
            done = torch.tensor([loader.epochs_done()], device=device)
            dist.all_reduce(done, op=dist.ReduceOp.MIN)
            if int(done) > epochs or step == job.steps:
                epochs = int(done)
                metrics.record("data", step, _data_summary(epochs, data))
            if validator and (step % job.validation.every == 0 or step == job.steps):
                metrics.record("validation", step, validator.loss(model, device))
            if validator and job.validation.sample_every and (step % job.validation.sample_every == 0
                                                             or step == job.steps):
                for sheet in validator.samples(model, step):
                    metrics.image(f"validation/{sheet.stem.split('-', 2)[-1]}", sheet, step)
            if step % job.checkpoint.every == 0 or step == job.steps:
                state.data = loader.state_dict()
                checkpointer.save(state)
        seen.close()
        about = {"preset": job.model.preset, "stage": job.stage, "step": str(state.step),
                 "config": json.dumps(to_dict(job))}  # a file found later says what it is
        export_consolidated(trained, out / "trained.safetensors", ema.shadow if ema else None, about)
        curve = metrics.close()
        if rank == 0:
            print(f"trained weights: {out / 'trained.safetensors'}; loss curve: {curve}", flush=True)
        return row or {}


def _features(job: TrainJob) -> FeatureSet:
    """The precomputed features of the job's shards, checked against the job (``training.data.features``)."""
    cfg = preset(job.model.preset, job.model.checkpoints, job.model.overrides)
    return open_features(list_shards(job.data), cfg, job.data)


# The loader counters summed over ranks each step; those that are a sample or shard the run could not use; those
# that say where the trained samples' subject crops came from (none on precomputed features).
REFERENCE_COUNTERS = ("references_same_clip", "references_other_frames", "references_other_clip",
                      "references_unreadable")
DATA_COUNTERS = ("samples_yielded", "samples_held_out", "samples_near_duplicate", "samples_too_short",
                 "samples_corrupt", "members_rejected", "shards_corrupt", "shards_failed", "read_retries",
                 *REFERENCE_COUNTERS)
SKIP_REASONS = ("samples_too_short", "samples_corrupt", "members_rejected", "shards_corrupt", "shards_failed")


def _counters(loader: ShardLoader) -> list[int]:
    """This rank's loader counters (``DATA_COUNTERS``) so far."""
    c = loader.counters()
    return [c.get(k, 0) for k in DATA_COUNTERS]


def _data_summary(epochs: int, data: dict[str, int]) -> dict:
    """What the run has made of its data so far (every rank's counts, from the start of the run): written when an
    epoch ends and at the last step. ``too_short``: clips shorter than the shortest window (data.frames at
    data.target_fps); ``held_out``: samples of validation sources; ``near_duplicate``: samples the dataset's dedup
    record removes; ``references_*``: the trained samples' subject crops by where they came from, and the
    other-clip crops that could not be read (data.subject_references)."""
    return {"epochs": epochs, "trained": data["samples_yielded"], "held_out": data["samples_held_out"],
            "near_duplicate": data["samples_near_duplicate"],
            **{k.removeprefix("samples_"): data[k] for k in SKIP_REASONS},
            **{k: data[k] for k in REFERENCE_COUNTERS}}


def _validator(job: TrainJob, fit, rank: int, world: int, out: Path, features: FeatureSet | None):
    """The validator of a job with a validation split (None without one, or when the split holds no usable clip)."""
    if not job.validation.fraction:
        return None
    if fit is None:
        raise JobError("validation needs dataset roots in data.urls (their manifest says which clips are of "
                       "held-out sources), not shard URLs")
    if not fit.validation:
        if rank == 0:
            log.warning("validation.fraction=%g holds out no usable clip of this dataset: no validation loss",
                        job.validation.fraction)
        return None
    if features is not None and job.validation.sample_every and rank == 0:
        log.warning("validation sample videos need the encoders: with model.encoders=precomputed only the "
                    "validation loss is measured")
    return Validator(job, fit, rank, world, out, features)

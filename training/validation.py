"""Validation while training: the loss on held-out clips at fixed timesteps and noise, and sample videos.

The clips are those ``training.data.fit`` chose from the validation sources (the same on every rank and run). Each
rank measures its share, padded so that every rank runs the same number of forwards (FSDP2 gathers weights in
each); the noise of a clip at a timestep is keyed by (seed, clip id, timestep), so the loss is the same at any world
size and across a resume. Every rank generates the same sample videos (the DiT is sharded: all take part), and
rank 0 writes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import torch
import torch.distributed as dist

from cinema_model.media import contact_sheet, write_mp4
from cinema_model.model import CinemaModel
from cinema_model.subjects import pad_subjects, to_model_range
from common import contract as C
from common.shard_reader import RawSample
from common.storage import Storage

from .batch import model_batch
from .config import JobError, TrainJob
from .data.decode import Sample, collate, decode_subject
from .data.features import FeatureSample, FeatureSet, collate_features, features_url
from .data.fit import DatasetFit
from .data.stream import ShardStream

log = logging.getLogger("training")


def read_clips(stream: ShardStream, wanted: set[str]) -> dict[str, RawSample]:
    """Clip id -> its raw sample, for the ``wanted`` clips of the stream's shards (each read once, in order)."""
    found = {}
    for i in range(len(stream.shards)):
        found.update({raw.key: raw for raw in stream.shard_samples(i) if raw.key in wanted})
    return found


def noise_generator(seed: int, clip_id: str, t: float) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{clip_id}/{t!r}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class Validator:
    def __init__(self, job: TrainJob, fit: DatasetFit, rank: int, world: int, out: Path,
                 features: FeatureSet | None):
        self.job, self.cfg, self.rank, self.features = job, job.validation, rank, features
        self.out = out / "validation"
        clips = fit.validation
        per_rank = math.ceil(len(clips) / world)
        # Rank r takes clips r, r + world, ...; past the end it repeats a clip with weight 0 (the same forwards).
        share = [(clips[i % len(clips)], 1.0 if i < len(clips) else 0.0)
                 for i in (rank + k * world for k in range(per_rank))]
        sampled = clips[: self.cfg.samples] if job.stage == "cinema" and features is None else []
        wanted = [c for c, _ in share] + sampled
        shards = sorted({url for url, _ in wanted})
        if features is not None:  # the features tar beside each shard holds the clip's features
            shards = [features_url(Storage(job.data.storage), s) for s in shards]
        stream = ShardStream(job.data, shards, rank, world, media=job.stage == "cinema", features=features is not None)
        raws = read_clips(stream, {cid for _, cid in wanted})
        self.items: list[tuple[str, Sample | FeatureSample | None, float]] = []
        for (_, cid), weight in share:
            sample = stream.decode(raws[cid]) if cid in raws else None
            if sample is None:
                log.warning("validation clip %s could not be read: left out of the validation loss", cid)
            self.items.append((cid, sample, weight if sample is not None else 0.0))
        if all(sample is None for _, sample, _ in self.items):  # its forwards need one clip to run on
            raise JobError(f"rank {rank}: none of its {len(self.items)} validation clips could be read")
        self.prompts = [raws[cid] for _, cid in sampled if cid in raws]
        if rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            log.info("validation: %d clips of held-out sources, %d per rank, at t=%s; %d sample video(s)",
                     len(clips), per_rank, self.cfg.timesteps, len(self.prompts))

    def _batch(self, sample: Sample | FeatureSample, device: torch.device) -> dict:
        if self.features is not None:
            return model_batch(collate_features([sample], self.job.data.max_subjects), device, self.features)
        return model_batch(collate([sample], self.job.data.max_subjects), device)

    @torch.no_grad()
    def loss(self, model: CinemaModel, device: torch.device) -> dict[str, float]:
        """{"val_loss": the mean over clips and timesteps, "val_loss_t<t>": the mean over clips at each}, the same
        on every rank."""
        aligner = self.job.stage == "aligner"  # the alignment loss of the captions: no timestep
        ts = [None] if aligner else self.cfg.timesteps
        sums = torch.zeros(len(ts) + 1, dtype=torch.float64)  # per timestep, then the total weight
        model.eval()
        try:
            for cid, sample, weight in self.items:
                if sample is None:  # an unreadable clip still runs the forwards the other ranks run
                    sample = next(s for _, s, _ in self.items if s is not None)
                batch = None if aligner else self._batch(sample, device)
                for i, t in enumerate(ts):
                    if aligner:
                        value = model.aligner_loss([sample.caption])["loss"]
                    else:
                        value = model.loss(batch, [noise_generator(self.cfg.seed, cid, t)],
                                           timesteps=torch.tensor([t]))["flow"]
                    sums[i] += weight * float(value)
                sums[-1] += weight
        finally:
            model.train()
        dist.all_reduce(sums)
        per_t = (sums[:-1] / sums[-1].clamp(min=1e-12)).tolist()
        if aligner:
            return {"val_loss": per_t[0]}
        return {"val_loss": sum(per_t) / len(per_t), **{f"val_loss_t{t:g}": v for t, v in zip(ts, per_t)}}

    @torch.no_grad()
    def samples(self, model: CinemaModel, step: int) -> list[Path]:
        """A video per validation prompt (its caption and subject crops), at the model's video size; rank 0 writes
        ``validation/step-N-<clip>.mp4`` and a contact sheet beside it. Returns the sheets' paths."""
        v, written = model.cfg.video, []
        model.eval()
        try:
            for raw in self.prompts:
                caption = raw.members.get(C.CAPTION, b"").decode("utf-8", "replace")
                pngs = [raw.members[m] for k in range(self.job.data.max_subjects)
                        if (m := C.subject_member(k)) in raw.members]
                crops = [to_model_range(decode_subject(p, v.height, v.width)) for p in pngs]
                subjects, counts = pad_subjects([crops], v.height, v.width)
                video = model.generate([caption], subjects, counts, seed=self.cfg.seed,
                                       steps=self.cfg.sample_steps)[0]
                if self.rank == 0:
                    mp4 = self.out / f"step-{step:08d}-{raw.key}.mp4"
                    write_mp4(video, mp4, v.fps)
                    sheet = mp4.with_suffix(".png")
                    contact_sheet(subjects[0, : int(counts[0])], video).save(sheet)
                    (mp4.with_suffix(".json")).write_text(json.dumps({"clip_id": raw.key, "caption": caption}))
                    written.append(sheet)
        finally:
            model.train()
        return written


"""One shard -> its features tar and commit marker, in an encoder actor (or in-process)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable

import torch
from safetensors.torch import save as save_tensors

from cinema_model.config import preset
from cinema_model.frozen import torch_dtype
from cinema_model.mllm import MllmEncoder
from cinema_model.model import encode_condition
from cinema_model.subjects import presence_mask
from cinema_model.text_encoder import T5TextEncoder
from cinema_model.vae import VideoVae
from common import contract as C
from common.storage import Storage

from ..batch import model_batch
from ..config import TrainJob
from ..data import features as F
from ..data.decode import collate
from ..data.identities import OtherClips
from ..data.near_duplicates import removed as near_duplicates
from ..data.stream import ShardStream


class ShardUnreadable(OSError):
    """The shard could not be read to its end (storage errors through every retry): nothing is committed."""


class FeatureEncoder:
    """The job's frozen encoders (the conditioning encoder and the VAE), loaded once, on ``device``."""

    def __init__(self, job: TrainJob, device: str | None = None):
        self.job = job
        self.cfg = preset(job.model.preset, job.model.checkpoints, job.model.overrides)
        self.dtype = torch_dtype(self.cfg.frozen_dtype)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        mllm = self.cfg.ablation.conditioning == "mllm"
        self.mllm = MllmEncoder.load(self.cfg.mllm, self.dtype).to(self.device) if mllm else None
        self.t5 = None if mllm else T5TextEncoder.load(self.cfg.t5, self.dtype).to(self.device)
        self.vae = VideoVae.load(self.cfg.vae, self.dtype).to(self.device)
        self.storage = Storage(job.data.storage)
        self.removed: dict[str, frozenset[str]] = {}  # dataset root -> clip ids its dedup record removes
        self.others: dict[str, OtherClips] = {}  # dataset root -> its subjects' crops in other clips
        self.made_with = F.made_with(self.cfg, job.data)

    def write_uncond(self, root: str) -> None:
        """The states of the empty prompt with no images: what condition dropout gives the model."""
        url = self.storage.join(root, F.FEATURES_DIR, F.UNCOND)
        if self.storage.list(self.storage.join(root, F.FEATURES_DIR), F.UNCOND):
            return
        h, w = self.job.data.buckets[0]
        states, mask = encode_condition(self.cfg, self.mllm, self.t5, [""], torch.zeros(1, 0, 3, h, w),
                                        torch.zeros(1, dtype=torch.long))
        self.storage.write_atomic(url, save_tensors({"states": states[0][mask[0]].to(self.dtype).cpu().contiguous(),
                                                     "mask": mask[0][mask[0]].cpu().contiguous()}))

    def shard(self, shard_url: str, check_lease: Callable[[], None] = lambda: None) -> dict:
        """Write the shard's features, then its commit marker, each after ``check_lease`` (the driver still holds
        the output); returns the marker."""
        root = F.dataset_root(shard_url)
        if root not in self.removed:  # read once per dataset root, not once per shard
            self.removed[root] = near_duplicates(self.job.data, [shard_url])
            self.others[root] = OtherClips(self.job.data, [shard_url])
        stream = ShardStream(self.job.data, [shard_url], 0, 1, media=True, removed=self.removed[root],
                             others=self.others[root])
        samples = 0
        with tempfile.TemporaryFile() as tmp:
            with tarfile.open(fileobj=tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                group = []
                for raw in stream.shard_samples(0):
                    sample = stream.decode(raw)  # epoch 0's subject references: the features hold one draw
                    if sample is None:  # counted, as the trainer would skip it
                        continue
                    # Consecutive clips of one bucket per call: the tar keeps the shard's order.
                    if group and (group[0][1].bucket != sample.bucket or len(group) == self.job.precompute.batch_size):
                        samples += self._encode(tar, group)
                        group = []
                    group.append((raw, sample))
                if group:
                    samples += self._encode(tar, group)
            if stream.counters["shards_failed"]:
                raise ShardUnreadable(f"{shard_url}: could not be read to its end; see the warnings above")
            size = tmp.tell()
            tmp.seek(0)
            sha = hashlib.file_digest(tmp, "sha256").hexdigest()
            tmp.seek(0)
            check_lease()
            self.storage.write_atomic(F.features_url(self.storage, shard_url), write=lambda f: shutil.copyfileobj(tmp, f))
        c = stream.counters
        marker = {"shard": shard_url, "features": F.features_url(self.storage, shard_url), "size": size,
                  "sha256": sha, "samples": samples, "samples_corrupt": c["samples_corrupt"],
                  "samples_too_short": c["samples_too_short"], "shard_corrupt": bool(c["shards_corrupt"]),
                  "made_with": F.digest(self.made_with)}
        check_lease()
        self.storage.write_atomic(F.marker_url(self.storage, shard_url), json.dumps(marker, indent=1).encode())
        return marker

    @torch.no_grad()
    def _encode(self, tar: tarfile.TarFile, group: list) -> int:
        batch = model_batch(collate([s for _, s in group], self.job.data.max_subjects), self.device)
        latents = self.vae.encode(batch["video"])
        subjects, counts = batch["subjects"], batch["num_subjects"]
        present = presence_mask(counts, subjects.shape[1]).to(self.device)
        subject_latents = self.vae.encode_images(subjects, present)
        states, mask = encode_condition(self.cfg, self.mllm, self.t5, batch["captions"], subjects, counts)
        for i, (raw, _) in enumerate(group):
            k, real = int(counts[i]), mask[i].bool()
            members = {name: raw.members[name] for name in (C.JSON, C.CAPTION) if name in raw.members}
            members[F.FEATURES] = F.encode_features(latents[i].to(self.dtype), subject_latents[i, :k].to(self.dtype),
                                                    states[i][real].to(self.dtype), mask[i][real])
            for name, data in members.items():
                info = tarfile.TarInfo(f"{raw.key}.{name}")  # mtime 0: a rerun writes the same bytes
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        return len(group)

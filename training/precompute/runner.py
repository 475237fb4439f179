"""The precompute job's driver: which shards need features, a Ray Data pipeline of encoder actors over them.

One driver per dataset root's ``features/`` at a time, as in curation (``common.lease``): the driver takes the lease
before it touches anything there, and the actors check it before each commit."""

from __future__ import annotations

import logging
import time

from common.lease import Lease, LeaseHeld
from common.ray_session import ray_session
from common.storage import Storage
from common.typed_config import ConfigError

from ..config import TrainJob
from ..data import features as F
from ..data.shard_urls import list_shards

log = logging.getLogger("training.precompute")


class ShardActor:
    """A Ray Data actor: the encoders once, then one shard per call. A shard that cannot be read is an error row
    (nothing committed: the rerun does it); so is a lease another driver took over (``lease_lost``: the driver
    stops); any other failure is a bug and fails the job."""

    def __init__(self, job: TrainJob, leases: dict[str, str]):
        from .encode import FeatureEncoder

        self.encoder = FeatureEncoder(job)
        self.leases = {root: Lease(self.encoder.storage, self.encoder.storage.join(root, F.FEATURES_DIR), holder=holder)
                       for root, holder in leases.items()}  # root -> the driver's lease, to check
        self.roots: set[str] = set()

    def __call__(self, batch: dict) -> dict:
        from .encode import ShardUnreadable

        out = {"shard": [], "samples": [], "skipped": [], "error": [], "lease_lost": []}
        for url in batch["shard"]:
            url = str(url)
            root = F.dataset_root(url)
            if root not in self.roots:
                self.encoder.write_uncond(root)  # before any marker: a committed shard always has it
                self.roots.add(root)
            marker, error, lost = None, "", False
            try:
                marker = self.encoder.shard(url, self.leases[root].check)
            except LeaseHeld as e:  # another driver took the output over
                error, lost = str(e), True
            except (ShardUnreadable, OSError) as e:
                error = f"{type(e).__name__}: {e}"
            out["samples"].append(marker["samples"] if marker else 0)
            out["skipped"].append(marker["samples_corrupt"] + marker["samples_too_short"] if marker else 0)
            out["error"].append(error)
            out["lease_lost"].append(lost)
            out["shard"].append(url)
        return out


def plan(job: TrainJob, shards: list[str]) -> list[str]:
    """Those of the job's ``shards`` without committed features. Writes each root's ``features/meta.json`` the
    first time; refuses (JobError) features made with another model or clip shape."""
    from cinema_model.config import preset

    storage = Storage(job.data.storage)
    expected = F.made_with(preset(job.model.preset, job.model.checkpoints, job.model.overrides), job.data)
    todo = []
    for root in dict.fromkeys(F.dataset_root(s) for s in shards):
        meta = F.read_meta(storage, root)
        if meta is None:
            storage.write_atomic(storage.join(root, F.FEATURES_DIR, F.META), _meta_json(expected))
        else:
            F.check_meta(meta, expected, root)
        # A killed run's temporaries are never read (only renamed names are); clear them.
        for folder in (F.FEATURES_DIR, f"{F.FEATURES_DIR}/{F.MARKERS_DIR}"):
            for tmp in storage.list_temporaries(storage.join(root, folder)):
                storage.remove(tmp)
        done = F.committed(storage, root)
        todo += [s for s in shards if F.dataset_root(s) == root and F.shard_stem(s) not in done]
    return todo


def _meta_json(expected: dict) -> bytes:
    import json

    return json.dumps({"made_with": expected, "sha256": F.digest(expected),
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1).encode()


def run(job: TrainJob) -> dict:
    """Precompute the features of every shard that has none, under each dataset root's lease (LeaseHeld: another
    driver has one); returns counts (shards total, skipped as committed, written, failed, samples written, samples
    skipped)."""
    storage = Storage(job.data.storage)
    shards = list_shards(job.data)
    held = []
    try:
        for root in dict.fromkeys(F.dataset_root(s) for s in shards):
            lease = Lease(storage, storage.join(root, F.FEATURES_DIR))
            lease.acquire()
            held.append((root, lease))
        return _run(job, shards, plan(job, shards), {root: lease.holder for root, lease in held})
    finally:
        for _, lease in held:
            lease.release()


def _run(job: TrainJob, shards: list[str], todo: list[str], leases: dict[str, str]) -> dict:
    result = {"shards": len(shards), "committed_before": len(shards) - len(todo), "written": 0, "failed": [],
              "samples": 0, "samples_skipped": 0}
    print(f"{len(shards)} shard(s), {len(shards) - len(todo)} with committed features, {len(todo)} to do", flush=True)
    if not todo:
        return result
    import ray

    p = job.precompute
    with ray_session(p.address, p.local_cpus):
        gpus = ray.cluster_resources().get("GPU", 0)
        if p.num_gpus > gpus:
            raise ConfigError(f"precompute.num_gpus={p.num_gpus:g} per actor but the Ray cluster has {gpus:g} GPU(s): "
                              "add GPU nodes, or encode on CPU with precompute.num_gpus=0")
        actors = p.actors or (max(1, int(gpus // p.num_gpus)) if p.num_gpus else 1)
        ds = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(ShardActor, fn_constructor_args=(job, leases), batch_size=1, num_cpus=p.num_cpus,
                            num_gpus=p.num_gpus, compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))))
        t0 = time.time()
        for row in ds.iter_rows():
            if row["lease_lost"]:  # another driver took the output over: stop before anything more is written
                raise LeaseHeld(row["error"])
            if row["error"]:
                result["failed"].append(f"{row['shard']}: {row['error']}")
                log.warning("%s: not committed (the rerun does it): %s", row["shard"], row["error"])
                continue
            result["written"] += 1
            result["samples"] += int(row["samples"])
            result["samples_skipped"] += int(row["skipped"])
            done = result["written"] + len(result["failed"])
            print(f"[{time.time() - t0:6.0f}s] shards {done}/{len(todo)}: {result['samples']} clips encoded, "
                  f"{result['samples_skipped']} unusable", flush=True)
    return result

"""The rank's data loader: torchdata's StatefulDataLoader over the shard stream, with a checked, per-rank state."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Iterator

from torchdata.stateful_dataloader import StatefulDataLoader

from ..config import DataConfig, JobError
from .features import FeatureSet
from .shard_urls import list_shards
from .stream import CHANGED_DATASET, ShardStream, shard_digest

log = logging.getLogger("training.data")


class ShardLoader:
    """Batches for one rank; each is a dict with ``key`` (list of B str), ``video`` (B, F, 3, H, W) uint8
    (H, W: one bucket), ``subjects`` (B, max_subjects, 3, H, W) uint8 RGB framed at the bucket's size and
    zero-padded, ``num_subjects`` (B,) int64, ``subject_mask`` (B, max_subjects) bool, ``caption`` (list of B str)
    and ``meta`` (list of B dicts: the manifest row). With ``media=False`` only key, caption and meta: nothing is
    decoded and no clip is too short.

    ``state_dict()`` is this rank's position (every worker's cursor, RNG and buffered sample positions, as plain
    ints, lists and dicts). ``load_state_dict`` takes every saved rank's: with the same world size and
    num_workers the stream continues exactly; with others it is re-derived (``training.data.stream``).
    """

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, shards: list[str] | None = None,
                 media: bool = True, features: FeatureSet | None = None, holdout: float = 0.0):
        """``features``: stream the precomputed features of the shards instead (batches as
        ``training.data.features.collate_features`` makes them); ``holdout``: the share of sources held out for
        validation (``training.data.split``), never yielded."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world size {world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        if features is not None:
            shards = features.shards
        self.dataset = ShardStream(cfg, shards if shards is not None else list_shards(cfg), rank, world_size, media,
                                   features=features is not None, holdout=holdout)
        workers = cfg.num_workers
        self._loader = StatefulDataLoader(self.dataset, batch_size=None, num_workers=workers,
                                          prefetch_factor=cfg.prefetch_factor if workers else None,
                                          persistent_workers=workers > 0)
        self._counters: dict[int, dict] = {}  # slot -> that worker's counters as of its latest batch

    def __iter__(self) -> Iterator[dict]:
        try:
            for batch in self._loader:
                self._counters[batch.pop("slot")] = batch.pop("counters")
                yield batch
        except JobError as e:  # from a worker: its message is the last line of the worker's traceback
            raise JobError(str(e).strip().splitlines()[-1].split("JobError: ", 1)[-1]) from None

    def counters(self) -> dict[str, int]:
        """This rank's data counters (samples read, yielded, skipped as corrupt or too short, shards skipped,
        read retries, epochs) summed over its workers, as of the batches yielded so far."""
        total = Counter()
        for c in self._counters.values():
            total.update(c)
        return dict(total)

    def epochs_done(self) -> int:
        """The epochs every one of this rank's workers has finished, as of the batches yielded so far."""
        if len(self._counters) < max(1, self.cfg.num_workers):
            return 0
        return min(c["epochs"] for c in self._counters.values())

    def state_dict(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "num_workers": self.cfg.num_workers,
                "loader": self._loader.state_dict()}

    def load_state_dict(self, states: list[dict]) -> None:
        """Every saved rank's ``state_dict()``, in rank order; call before iterating. With the saved world size and
        num_workers this rank continues exactly where it was; otherwise every old slot's state is handed to the
        stream, which re-derives this rank's position from all of them (no sample of the current epoch twice)."""
        saved = states[self.rank] if len(states) == self.world_size else None
        if saved and (saved["world_size"], saved["num_workers"]) == (self.world_size, self.cfg.num_workers):
            self._loader.load_state_dict(saved["loader"])
            return
        old = [slot for state in states for slot in _slot_states(state)]
        if any(o["shards"] != shard_digest(self.dataset.shards) for o in old):
            raise JobError(CHANGED_DATASET)
        self.dataset.handover = old
        if self.rank == 0:
            s = states[0]
            log.warning("data: the checkpoint's stream was cut for %d rank(s) x %d worker(s), this run has %d x %d: "
                        "the position is re-derived from all %d old slots (epoch %d on; samples they read in it are "
                        "skipped, the %d they held unbatched are dealt out): no sample is seen twice in an epoch, "
                        "the order differs from the old run's", s["world_size"], s["num_workers"], self.world_size,
                        self.cfg.num_workers, len(old), min(o["epoch"] for o in old),
                        sum(len(o["buffer"]) + sum(map(len, o["pending"])) for o in old))


def _slot_states(state: dict) -> list[dict]:
    """The stream states of one saved rank's slots (its loader workers, or the rank itself), in slot order."""
    loader = state["loader"]
    if state["num_workers"] == 0:
        return [loader["dataset_state"]]
    workers = loader["_snapshot"]["_worker_snapshots"]
    return [workers[f"worker_{i}"]["dataset_state"] for i in range(state["num_workers"])]

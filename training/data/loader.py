"""The rank's data loader: torchdata's StatefulDataLoader over the shard stream, with a checked, per-rank state."""

from __future__ import annotations

from collections import Counter
from typing import Iterator

from torchdata.stateful_dataloader import StatefulDataLoader

from ..config import DataConfig
from .storage import list_shards
from .stream import ShardStream


class ShardLoader:
    """Batches for one rank; each is a dict with ``key`` (list of B str), ``video`` (B, F, 3, H, W) uint8
    (H, W: one bucket), ``subjects`` (B, max_subjects, 4, S, S) uint8 RGBA zero-padded,
    ``num_subjects`` (B,) int64, ``subject_mask`` (B, max_subjects) bool, ``caption`` (list of B str) and
    ``meta`` (list of B dicts: the manifest row).

    ``state_dict()`` is this rank's position (every worker's cursor, RNG and buffered sample positions, as plain
    ints, lists and dicts); save one per rank and give it back to the same rank of a run with the same world
    size and num_workers.
    """

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, shards: list[str] | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world size {world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.dataset = ShardStream(cfg, shards if shards is not None else list_shards(cfg), rank, world_size)
        workers = cfg.num_workers
        self._loader = StatefulDataLoader(self.dataset, batch_size=None, num_workers=workers,
                                          prefetch_factor=cfg.prefetch_factor if workers else None,
                                          persistent_workers=workers > 0)
        self._counters: dict[int, dict] = {}  # slot -> that worker's counters as of its latest batch

    def __iter__(self) -> Iterator[dict]:
        for batch in self._loader:
            self._counters[batch.pop("slot")] = batch.pop("counters")
            yield batch

    def counters(self) -> dict[str, int]:
        """This rank's data counters (samples read, yielded, skipped as corrupt or too short, shards skipped,
        read retries, epochs) summed over its workers, as of the batches yielded so far."""
        total = Counter()
        for c in self._counters.values():
            total.update(c)
        return dict(total)

    def state_dict(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "num_workers": self.cfg.num_workers,
                "loader": self._loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Call before iterating. A changed world size or worker count is an error: the saved positions belong to
        (rank, worker) slots that no longer exist, and silently remapping them would repeat or drop samples."""
        saved = (state["rank"], state["world_size"], state["num_workers"])
        if saved != (self.rank, self.world_size, self.cfg.num_workers):
            raise ValueError(
                f"data loader state was saved by rank {saved[0]} of world size {saved[1]} with {saved[2]} workers; "
                f"this is rank {self.rank} of {self.world_size} with {self.cfg.num_workers}. Resume with the same "
                "world size and data.num_workers, or start the data stream afresh (drop the loader state).")
        self._loader.load_state_dict(state["loader"])

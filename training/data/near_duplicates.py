"""The clips a run leaves out as near duplicates of others: those the dedup record of their dataset removes
(``common.contract.read_dedup``, written by ``python -m curation dedup``), unless ``data.near_duplicates`` is keep."""

from __future__ import annotations

from common import contract as C
from common.storage import Storage

from ..config import DataConfig, JobError


def dataset_roots(shards: list[str]) -> list[str]:
    """The dataset roots of shard URLs (ROOT/shards/<name>.tar, or the features beside them); an explicit shard
    elsewhere has none."""
    roots = []
    for url in shards:
        root, folder, _ = url.rsplit("/", 2) if url.count("/") >= 2 else ("", "", "")
        if folder in (C.SHARDS_DIR, "features"):
            roots.append(root)
    return list(dict.fromkeys(roots))


def removed(cfg: DataConfig, shards: list[str]) -> frozenset[str]:
    """Clip ids the run does not train on (or measure validation loss on) as near duplicates."""
    if cfg.near_duplicates == "keep":
        return frozenset()
    storage, out = Storage(cfg.storage), set()
    for root in dataset_roots(shards):
        try:
            out |= C.removed_clips(storage, root)
        except ValueError as e:  # a record of another contract, named
            raise JobError(str(e)) from None
    return frozenset(out)

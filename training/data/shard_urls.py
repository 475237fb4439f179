"""Which shard URLs a run reads: dataset roots expand to their committed shards, explicit .tar URLs stay as given."""

from __future__ import annotations

from urllib.parse import urlsplit

from common import contract as C
from common.storage import Storage

from ..config import DataConfig, JobError


def list_shards(cfg: DataConfig) -> list[str]:
    """The shard URLs of ``cfg.urls``, in a fixed order (``common.contract.committed_shards`` per dataset root)."""
    storage = Storage(cfg.storage)
    shards = []
    for url in cfg.urls:
        if urlsplit(url).path.endswith(".tar"):  # the path: a presigned http URL ends in its query
            shards.append(url)
            continue
        if url.startswith(("http://", "https://")):
            raise JobError(f"{url}: http(s) cannot be listed; give the shard URLs (ending in .tar) instead")
        found = C.committed_shards(storage, url.rstrip("/"))
        if not found:
            raise JobError(f"{url}: no committed shards (nothing in {C.MANIFEST_DIR}/)")
        shards.extend(found)
    return shards

"""Opening and listing shard URLs: local paths, s3:// (any S3-compatible endpoint) and http(s), over fsspec.

The training side's own small reader: it shares nothing with curation but the dataset contract.
"""

from __future__ import annotations

from typing import IO
from urllib.parse import urlsplit

import fsspec

from curation import contract as C

from ..config import DataConfig, JobError


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _fs(url: str, cfg: DataConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    options = {}
    if url.startswith("s3://"):
        options = {"anon": cfg.anon, "client_kwargs": {"endpoint_url": cfg.endpoint_url} if cfg.endpoint_url else {}}
    return fsspec.core.url_to_fs(url, **options)


def open_url(url: str, cfg: DataConfig) -> IO[bytes]:
    """A seekable binary file; remote ones read by ranged requests, so a reopen can start mid-shard."""
    if is_local(url):
        return open(url.removeprefix("file://"), "rb")
    fs, path = _fs(url, cfg)
    return fs.open(path, "rb")


def _names(url: str, cfg: DataConfig, suffix: str) -> list[str]:
    fs, path = _fs(url, cfg)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(n for n in (e.rstrip("/").rsplit("/", 1)[-1] for e in entries) if n.endswith(suffix))


def list_shards(cfg: DataConfig) -> list[str]:
    """The shard URLs of ``cfg.urls``, in a fixed order. A dataset root contributes the shards its manifest names:
    a shard without a manifest part was never committed (the writer died between the two) and is not read."""
    shards = []
    for url in cfg.urls:
        if urlsplit(url).path.endswith(".tar"):  # the path: a presigned http URL ends in its query
            shards.append(url)
            continue
        if url.startswith(("http://", "https://")):
            raise JobError(f"{url}: http(s) cannot be listed; give the shard URLs (ending in .tar) instead")
        root = url.rstrip("/")
        parts = _names(f"{root}/{C.MANIFEST_DIR}", cfg, ".parquet")
        found = [f"{root}/{C.SHARDS_DIR}/{p.removesuffix('.parquet')}.tar" for p in parts]
        if not found:
            raise JobError(f"{url}: no committed shards (nothing in {C.MANIFEST_DIR}/)")
        shards.extend(found)
    return shards

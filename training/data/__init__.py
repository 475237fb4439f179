"""Streaming, resumable data loading of the curated dataset (WebDataset shards + Parquet manifest)."""

from .loader import ShardLoader
from .shard_urls import list_shards

__all__ = ["ShardLoader", "list_shards"]

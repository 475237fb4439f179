"""Probe: container metadata, a first decoded frame, and the source's SHA-1."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

from common.storage import Storage

from curation.config import JobConfig
from curation.pipeline.row import Row
from curation.pipeline.stage import Stage
from curation.video.decode import probe


class ProbeStage(Stage):
    name = "probe"
    consumes = ("source",)

    def __init__(self, cfg: JobConfig):
        super().__init__(cfg)
        self.storage = Storage(cfg.storage)

    def process(self, row: Row) -> list[Row]:
        uri = row.source_uri
        info = probe(uri, self.storage, self.cfg.max_source_pixels)
        sha1 = hashlib.sha1()
        with self.storage.open(uri) as f:
            while chunk := f.read(1 << 22):
                sha1.update(chunk)
        return [row.with_meta(**asdict(info), source_sha1=sha1.hexdigest())]

"""Subjects' crops in other clips of their source, for ``data.subject_references=other_clip``: the identity records
of a run's dataset roots (``common.contract.read_identities``, written by ``python -m curation identities``)."""

from __future__ import annotations

import bisect
import logging
import re

import pyarrow as pa
import pyarrow.compute as pc

from common import contract as C
from common.storage import Storage

from ..config import DataConfig, JobError
from .near_duplicates import dataset_roots

log = logging.getLogger("training.data")

_SHARD_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a record names a shard of its root, never a path


class OtherClips:
    """The records, each sorted by (clip id, subject) once and searched by bisection: Arrow buffers, which the
    loader workers share with the process that read them, where a dict of every subject would be copied into each.
    Empty unless ``data.subject_references`` is other_clip and the stream decodes subjects (``media``)."""

    def __init__(self, cfg: DataConfig, shards: list[str], media: bool = True):
        self.storage = Storage(cfg.storage)
        self.max_member = int(cfg.max_member_mb * 1e6)
        self.records: list[tuple[str, pa.Array, pa.Array, pa.Array]] = []  # root, clip ids, subjects, others
        self._warned: set[str] = set()
        if not media or cfg.subject_references != "other_clip":
            return
        for root in dataset_roots(shards):
            try:
                table = C.read_identities(self.storage, root)
            except ValueError as e:  # a record of another contract, named
                raise JobError(str(e)) from None
            if table is None:
                continue
            table = table.filter(pc.field("clip_id").is_valid() & pc.field("subject").is_valid()
                                 & (pc.list_value_length(pc.field("others")) > 0))
            if len(table):
                table = table.sort_by([("clip_id", "ascending"), ("subject", "ascending")])
                self.records.append((root, *(table[c].combine_chunks() for c in ("clip_id", "subject", "others"))))

    def candidates(self, clip_id: str, subject: int) -> list[tuple[str, dict]]:
        """(dataset root, ``contract.OTHER_REFERENCE`` row) of each crop of the subject in another clip, most
        similar first; empty when no record holds the subject."""
        for root, ids, subjects, others in self.records:
            def at(j: int) -> tuple[str, int]:
                return ids[j].as_py(), subjects[j].as_py()

            i = bisect.bisect_left(range(len(ids)), (clip_id, subject), key=at)
            if i < len(ids) and at(i) == (clip_id, subject):
                return [(root, o) for o in others[i].as_py() if o is not None]
        return []

    def read(self, root: str, other: dict) -> bytes:
        """The crop's PNG bytes, with one range read of its shard. ValueError, before reading, for a record entry
        that names no shard of the root or a size over data.max_member_mb (a record never decides what a reader
        allocates), and for a short read; storage errors propagate (OSError)."""
        shard, offset, size = other["shard"], other["offset"], other["size"]
        if not isinstance(shard, str) or not _SHARD_NAME.match(shard):
            raise ValueError(f"the identity record names shard {shard!r}, not a shard name")
        if offset is None or size is None or offset < 0 or not 0 < size <= self.max_member:
            raise ValueError(f"the identity record gives a crop of {size} bytes at byte {offset}: not within 1 byte "
                             f"and data.max_member_mb ({self.max_member} bytes)")
        url = self.storage.join(root, C.SHARDS_DIR, f"{shard}.tar")
        data = self.storage.read_range(url, offset, size)
        if len(data) != size:
            raise ValueError(f"{url}: {len(data)} bytes at byte {offset}, the identity record says {size}")
        return data

    def warn(self, root: str, other: dict, error: Exception) -> None:
        """Say once per shard that a crop the record places in it could not be used."""
        shard = str(other["shard"])
        if shard not in self._warned:
            self._warned.add(shard)
            log.warning("%s: the identity record's crop %s of clip %s could not be used (counted as "
                        "references_unreadable; the subject's own references stand in): %s: %s",
                        root, other["member"], other["clip_id"], type(error).__name__, error)

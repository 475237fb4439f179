"""Shards written where the clips are made: the last step of the pipeline on every worker.

``ShardSink`` packs the clips of the rows it is given into WebDataset shards and writes each one straight to
``OUTPUT/shards/`` (temporary name, then rename) once it reaches ``shards.target_size_mb``. What it passes on is a
``shard`` row: the shard's name, size and manifest rows, a few KB per clip, never the clips themselves. Only the
driver commits (``curation.sink.writer``): a shard is part of the dataset once the driver has written its manifest part.

Shard names come from the clips they hold (``contract.shard_name``), so writers never collide and a retried task
rewrites the same shard. The last shard of a task, when smaller than ``shards.tail_fraction`` of the target, is
written to ``OUTPUT/staging/`` instead; the driver has such tails merged by ``repack`` (on a worker) into full
shards, so that many writers do not leave many small shards. ``repack`` also rewrites a shard without the clips the
driver must not commit twice (a retried task, a byte-identical copy of a source).
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

from common import contract as C
from common.shard_reader import iter_samples, parse_json
from common.storage import Storage

from curation.config import ShardsConfig
from curation.pipeline.row import Row


@dataclass
class _Sample:
    key: str
    meta: dict
    members: list[tuple[str, int, int]]  # (field, offset, size) in the spill file


def _write_tar(f: IO[bytes], samples: Iterable[tuple[str, list[tuple[str, bytes]]]]) -> dict[str, list[dict]]:
    """Writes the samples; returns where each sample's crops lie in the tar (``contract.MEMBER_OFFSET``), so one
    crop can be read by range without the rest of the shard."""
    offsets: dict[str, list[dict]] = {}
    at = 0
    # Fixed mtime and mode: the same clips make the same bytes, whichever task packs them.
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for field, data in members:
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                tar.addfile(info, io.BytesIO(data))
                at += tarfile.BLOCKSIZE  # USTAR: one header block (names are short), then the data, padded
                if field.endswith(".png"):
                    offsets.setdefault(key, []).append({"member": field, "offset": at, "size": len(data)})
                at += -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return offsets


def _with_offsets(records: list[dict], offsets: dict[str, list[dict]]) -> None:
    for r in records:
        r["member_offsets"] = offsets.get(r["clip_id"], [])


def _members(record: dict, payload: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A sample's members in contract order: mp4, json (the manifest row), caption, subject crops."""
    out = [(f, d) for f, d in payload if f == C.MP4]
    out.append((C.JSON, json.dumps(record).encode()))
    if record["caption"] is not None:
        out.append((C.CAPTION, record["caption"].encode()))
    return out + [(f, d) for f, d in payload if f not in (C.MP4, C.JSON, C.CAPTION)]


class ShardSink:
    """Packs clips into shards on the worker; passes every other row on untouched (module docstring)."""

    def __init__(self, output: str, storage: Storage, cfg: ShardsConfig):
        self.output, self.storage, self.cfg = output.rstrip("/"), storage, cfg

    def __call__(self, rows: Iterable[Row]) -> Iterator[Row]:
        samples: list[_Sample] = []
        size = 0
        # Clip bytes wait in an anonymous file (gone with the process, whatever kills it), not in memory.
        with tempfile.TemporaryFile() as spill:
            for row in rows:
                if row.kind != "clip":
                    yield row
                    continue
                samples.append(self._hold(spill, row))
                size += sum(n for _, _, n in samples[-1].members)
                if size >= self.cfg.target_size_mb * 1e6 or len(samples) >= self.cfg.max_clips:
                    yield self._write(spill, samples, size, C.SHARDS_DIR)
                    samples, size = [], 0
                    spill.seek(0)
                    spill.truncate()
            if samples:
                small = size < self.cfg.tail_fraction * self.cfg.target_size_mb * 1e6
                yield self._write(spill, samples, size, C.STAGING_DIR if small else C.SHARDS_DIR)

    @staticmethod
    def _hold(spill: IO[bytes], row: Row) -> _Sample:
        names = C.png_members(row.meta)
        if len(names) != len(row.pngs or []):
            raise ValueError(f"clip {row.meta['clip_id']}: {len(row.pngs or [])} crops for {len(names)} subject members")
        payload = [(C.MP4, row.mp4), *zip(names, row.pngs or [])]
        spill.seek(0, 2)
        members = []
        for field, data in payload:
            members.append((field, spill.tell(), len(data)))
            spill.write(data)
        return _Sample(C.check_clip_id(row.meta["clip_id"]), row.meta, members)

    def _write(self, spill: IO[bytes], samples: list[_Sample], size: int, folder: str) -> Row:
        name = C.shard_name([(s.meta["source_uri"], s.key) for s in samples])
        records = [C.manifest_row(s.meta, name) for s in samples]

        def payload(s: _Sample) -> list[tuple[str, bytes]]:
            out = []
            for field, offset, n in s.members:
                spill.seek(offset)
                out.append((field, spill.read(n)))
            return out

        uri = self.storage.join(self.output, folder, f"{name}.tar")
        offsets: dict[str, list[dict]] = {}
        self.storage.write_atomic(uri, write=lambda f: offsets.update(_write_tar(
            f, ((s.key, _members(r, payload(s))) for s, r in zip(samples, records)))))
        _with_offsets(records, offsets)
        return Row("shard", "", {"name": name, "staged": folder == C.STAGING_DIR, "bytes": size,
                                 "records": records})


def repack(output: str, storage: Storage, pieces: list[str], keep: list[tuple[str, str]]) -> dict:
    """One shard in ``shards/`` of the clips ``keep`` ((source URI, clip id) each) found in the shards or staged
    tails ``pieces`` (URIs), in that order, their manifest rows renamed to it. Returns what ``ShardSink`` sends for
    a shard (not staged)."""
    wanted = {cid for _, cid in keep}
    name = C.shard_name(keep)
    records, size = [], 0

    def samples():
        nonlocal size
        records.clear()
        size = 0
        for uri in pieces:
            with storage.open(uri) as shard:
                for sample, _, _ in iter_samples(shard, 0, 0, 0):
                    if sample.key not in wanted:
                        continue
                    record = {**parse_json(sample.members[C.JSON]), "shard": name}
                    records.append(record)
                    payload = [(f, d) for f, d in sample.members.items() if f not in (C.JSON, C.CAPTION)]
                    size += sum(len(d) for _, d in payload)
                    yield sample.key, _members(record, payload)

    offsets: dict[str, list[dict]] = {}
    storage.write_atomic(storage.join(output, C.SHARDS_DIR, f"{name}.tar"),
                         write=lambda f: offsets.update(_write_tar(f, samples())))
    _with_offsets(records, offsets)
    missing = wanted - {r["clip_id"] for r in records}
    if missing:
        raise ValueError(f"repack into {name}: clip(s) not found in {pieces}: {sorted(missing)[:3]}")
    return {"name": name, "staged": False, "bytes": size, "records": records}

"""The dataset sink: WebDataset shards, Parquet manifest and errors, per-source done markers.

Exactly-once output from at-least-once processing:

1. A shard is built in a local temporary file, then written to ``shards/`` under a temporary name and renamed.
2. Only then is its manifest part renamed into ``manifest/``: the manifest is the truth. A shard without a
   manifest part (killed between 1 and 2) is an orphan and is deleted on the next start.
3. Errors seen so far go to ``errors/`` in the same commit, then ``done/`` markers for every source whose
   clips are all in committed shards (or that failed as a whole). A failure that was not the source's fault
   (``curation.faults``) never marks its source: the rerun processes it again.

A rerun skips sources with a done marker and drops clips whose ids are already in the manifest, so a source
that was half-committed when the driver died is finished without duplicates. Clip ids come from the source's
content, so byte-identical copies of a source make the same clips: the first copy's are written, each other copy
settles on them and its marker names the copy it duplicates.

The writer runs under the output's lease (``curation.lease``): ``check_lease`` is called before every commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from common import contract as C
from common.storage import Storage

from .config import ShardsConfig
from .faults import JobStopped
from .stages.base import Row

log = logging.getLogger("curation")
REJECTED_EXAMPLES = 4  # dropped clips kept per filter (their metadata) for the report


def done_marker_name(uri: str) -> str:
    return hashlib.sha1(uri.encode()).hexdigest()[:24] + ".json"


def read_parquet_dir(storage: Storage, prefix: str, schema: pa.Schema) -> pa.Table:
    """All committed parts under ``prefix`` as one table (empty with ``schema`` when there are none)."""
    tables = []
    for uri in storage.list(prefix, ".parquet"):
        with storage.open(uri) as f:
            tables.append(pq.read_table(f, schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


@dataclass
class _Source:
    expected: int | None = None  # candidate clips, known once the summary row arrives
    settled: int = 0  # clips committed, dropped or failed
    pending: int = 0  # clips in the open shard
    failed: bool = False  # the whole source failed by its own fault
    clip_errors: int = 0  # clips that failed by the source's fault
    written: int = 0  # clips of it this run wrote
    dropped: int = 0  # clips of it a filter rejected
    retry: bool = False  # something failed by the environment's fault: the rerun processes the source again
    duplicate_of: str | None = None  # a byte-identical source seen first

    def complete(self) -> bool:
        if self.retry:
            return False
        return self.failed or (self.expected is not None and self.settled == self.expected and self.pending == 0)


@dataclass
class RunStats:
    """What this run did, for the summary and the report."""

    sources_done: int = 0
    sources_failed: int = 0
    source_seconds: float = 0.0
    clips_written: int = 0
    clips_duplicate: int = 0
    clip_seconds: float = 0.0
    bytes_written: int = 0
    shards_written: int = 0
    dropped: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    sources_duplicate: int = 0  # byte-identical copies of a source seen first
    environment: list[str] = field(default_factory=list)  # environment faults: their sources are left to the rerun
    sources: dict[str, dict] = field(default_factory=dict)  # uri -> its done marker, for every source this run settled
    motion_all: list[float] = field(default_factory=list)  # every candidate clip, kept or dropped
    samples: list[tuple[str, bytes, list[bytes]]] = field(default_factory=list)  # (clip_id, mp4, subject PNGs)
    rejected: dict[str, list[dict]] = field(default_factory=dict)  # filter -> a few dropped clips' metadata


class DatasetWriter:
    def __init__(self, output: str, storage: Storage, cfg: ShardsConfig, sample_clips: int = 12,
                 check_lease: Callable[[], None] = lambda: None):
        self.out = output.rstrip("/")
        self.storage = storage
        self.cfg = cfg
        self.sample_clips = sample_clips
        self.check_lease = check_lease
        self.stats = RunStats()
        self.committed: set[str] = set()
        self.error_keys: set[tuple] = set()
        self.done: dict[str, str] = {}  # uri -> "ok" | "error"
        self._sources: dict[str, _Source] = {}
        self._owner: dict[str, str] = {}  # clip id -> the source that sent it first in this run
        self._sha1_owner: dict[str, str] = {}  # source sha1 -> the first source with that content
        self._open_ids: set[str] = set()  # clip ids in the open shard
        # Shards are built in a folder of their own per output, so a killed run's leftovers are found and removed.
        self._tmpdir = os.path.join(tempfile.gettempdir(), "curation-" + hashlib.sha1(self.out.encode()).hexdigest()[:16])
        self._errors: list[dict] = []
        self._next_index = 0
        self._tar: tarfile.TarFile | None = None
        self._tmp: str | None = None
        self._rows: list[dict] = []
        self._bytes = 0

    def path(self, *parts: str) -> str:
        return self.storage.join(self.out, *parts)

    # -- start-up ---------------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Clean up after a killed run and load what is already committed."""
        for d in (C.SHARDS_DIR, C.MANIFEST_DIR, C.ERRORS_DIR, C.DONE_DIR):
            for tmp in self.storage.list_temporaries(self.path(d)):
                self.storage.remove(tmp)
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        manifest = read_parquet_dir(self.storage, self.path(C.MANIFEST_DIR), C.MANIFEST_SCHEMA)
        self.committed = set(manifest.column("clip_id").to_pylist())
        for sha1, uri in zip(manifest.column("source_sha1").to_pylist(), manifest.column("source_uri").to_pylist()):
            self._sha1_owner.setdefault(sha1, uri)
        with_manifest = {u.rsplit("/", 1)[-1].removesuffix(".parquet") for u in self.storage.list(self.path(C.MANIFEST_DIR), ".parquet")}
        indices = [-1]
        for uri in self.storage.list(self.path(C.SHARDS_DIR), ".tar"):
            name = uri.rsplit("/", 1)[-1].removesuffix(".tar")
            if name not in with_manifest:
                log.warning("removing orphan shard %s (its manifest part was never committed)", name)
                self.storage.remove(uri)
            indices.append(int(name.split("-")[-1]))
        for name in with_manifest:
            indices.append(int(name.split("-")[-1]))
        for uri in self.storage.list(self.path(C.ERRORS_DIR), ".parquet"):
            indices.append(int(uri.rsplit("-", 1)[-1].removesuffix(".parquet")))
        self._next_index = max(indices) + 1
        errors = read_parquet_dir(self.storage, self.path(C.ERRORS_DIR), C.ERRORS_SCHEMA)
        self.error_keys = {(r["uri"], r["clip_id"], r["stage"]) for r in errors.to_pylist()}
        for uri in self.storage.list(self.path(C.DONE_DIR), ".json"):
            marker = json.loads(self.storage.read_bytes(uri))
            self.done[marker["uri"]] = marker["status"]

    # -- streaming ------------------------------------------------------------------------------------------
    def add(self, row: Row) -> None:
        kind, uri, meta = row["kind"], row["source_uri"], row["meta"]
        clip_id = meta.get("clip_id") if kind in ("clip", "dropped", "error") else None
        owner = self._owner.get(clip_id) if clip_id is not None else None
        if owner == uri:  # sent again by a task Ray retried after its worker died: count it once
            self.stats.clips_duplicate += kind == "clip"
            return
        src = self._sources.setdefault(uri, _Source())
        if owner is not None:  # the same clip from a byte-identical copy: it settles with the first copy's
            self.stats.clips_duplicate += kind == "clip"
            if clip_id in self._open_ids:
                src.pending += 1
            else:
                src.settled += 1
            return
        if clip_id is not None:
            self._owner[clip_id] = uri
        if kind == "clip":
            self.stats.motion_all.append(meta["motion"])
            if meta["clip_id"] in self.committed:
                self.stats.clips_duplicate += 1
                src.settled += 1
            else:
                self._append(meta, row)
                src.pending += 1
                src.written += 1
        elif kind == "dropped":
            self.stats.motion_all.append(meta["motion"])
            self.stats.dropped[meta["dropped_by"]] += 1
            self._reject_example(meta)
            src.settled += 1
            src.dropped += 1
        elif kind == "summary":
            src.expected = meta["num_clips"]
            sha1 = meta.get("source_sha1")
            first = self._sha1_owner.setdefault(sha1, uri) if sha1 else uri
            if first != uri:
                src.duplicate_of = first
                self.stats.sources_duplicate += 1
                return
            self.stats.source_seconds += meta["duration_s"]
            short = meta.get("num_short_scenes", 0)
            if short:
                # Scenes shorter than scenes.min_clip_s make no candidate clip, so no dropped row says why.
                self.stats.dropped["too_short"] += short
                self._reject_example({"source_uri": uri, "start_s": 0.0, "end_s": meta["duration_s"],
                                      "num_scenes": short, "dropped_by": "too_short"})
        elif kind == "error":
            self._error(src, meta)
        else:
            raise ValueError(f"unexpected row kind {kind!r}")
        if self._rows and (self._bytes >= self.cfg.target_size_mb * 1e6 or len(self._rows) >= self.cfg.max_clips):
            self.flush()

    def _reject_example(self, meta: dict) -> None:
        examples = self.stats.rejected.setdefault(meta["dropped_by"], [])
        if len(examples) < REJECTED_EXAMPLES:
            examples.append(meta)

    def _error(self, src: _Source, meta: dict) -> None:
        fault = meta.get("fault", "source")
        if fault != "source":
            # Not the source's fault: nothing is recorded against it and it stays to be done by the rerun.
            src.retry = True
            where = f"{meta['stage']} on {meta['uri']}" + (f" (clip {meta['clip_id']})" if meta["clip_id"] else "")
            self.stats.environment.append(f"{where}: {meta['message']}")
            if fault == "stop":
                raise JobStopped(f"{where}: {meta['message']}")
            log.warning("environment fault, source left for the rerun: %s: %s", where, meta["message"])
            return
        self.stats.errors[meta["error_type"]] += 1
        key = (meta["uri"], meta["clip_id"], meta["stage"])
        if key not in self.error_keys:
            self.error_keys.add(key)
            self._errors.append(meta)
        if meta["clip_id"] is None:
            src.failed = True
        else:
            src.settled += 1
            src.clip_errors += 1

    def _append(self, meta: dict, row: Row) -> None:
        if self._tar is None:
            os.makedirs(self._tmpdir, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(suffix=".tar", prefix="shard-", dir=self._tmpdir)
            os.close(fd)
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        shard = C.shard_name(self._next_index)
        record = C.manifest_row(meta, shard)
        key = C.check_clip_id(meta["clip_id"])
        members = {C.MP4: row["mp4"], C.JSON: json.dumps(record).encode()}
        if record["caption"] is not None:
            members[C.CAPTION] = record["caption"].encode()
        for k, png in enumerate(row.get("pngs") or []):
            members[C.subject_member(k)] = png
        now = time.time()
        for member, data in members.items():
            info = tarfile.TarInfo(f"{key}.{member}")
            info.size, info.mtime, info.mode = len(data), now, 0o444
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data)
        self._rows.append(record)
        self._open_ids.add(key)
        self.stats.clip_seconds += meta["end_s"] - meta["start_s"]
        if len(self.stats.samples) < self.sample_clips:
            self.stats.samples.append((key, row["mp4"], row.get("pngs") or []))

    # -- commit ---------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Commit the open shard, its manifest part and pending errors, then mark finished sources done."""
        name = C.shard_name(self._next_index)
        if self._tar is not None or self._errors:
            self.check_lease()
        if self._tar is not None:
            self._tar.close()
            self.storage.write_atomic(self.path(C.SHARDS_DIR, f"{name}.tar"), local_file=self._tmp)
            self.stats.bytes_written += os.path.getsize(self._tmp)
            os.remove(self._tmp)
            table = pa.Table.from_pylist(self._rows, schema=C.MANIFEST_SCHEMA)
            self.storage.write_atomic(self.path(C.MANIFEST_DIR, f"{name}.parquet"), _parquet(table))
            self.committed.update(r["clip_id"] for r in self._rows)
            self.stats.clips_written += len(self._rows)
            self.stats.shards_written += 1
            log.info("committed shard %s: %d clips, %.1f MB", name, len(self._rows), self._bytes / 1e6)
        if self._errors:
            table = pa.Table.from_pylist(self._errors, schema=C.ERRORS_SCHEMA)
            self.storage.write_atomic(self.path(C.ERRORS_DIR, f"{name}.parquet"), _parquet(table))
        if self._tar is not None or self._errors:
            self._next_index += 1
        self._tar, self._tmp, self._rows, self._bytes, self._errors = None, None, [], 0, []
        self._open_ids.clear()
        for uri, src in list(self._sources.items()):
            src.settled += src.pending
            src.pending = 0
            if src.complete():
                self._mark_done(uri, src)

    def _mark_done(self, uri: str, src: _Source) -> None:
        # A source with a failed clip is not "ok": retry_errors=true gives its failed clips another try.
        status = "error" if src.failed or src.clip_errors else "ok"
        marker = {"uri": uri, "status": status, "clips": src.expected or 0, "written": src.written,
                  "dropped": src.dropped, "clip_errors": src.clip_errors}
        if src.duplicate_of is not None:
            marker["duplicate_of"] = src.duplicate_of
        self.stats.sources[uri] = marker
        self.storage.write_atomic(self.path(C.DONE_DIR, done_marker_name(uri)), json.dumps(marker).encode())
        self.done[uri] = status
        del self._sources[uri]
        if src.failed:
            self.stats.sources_failed += 1
        else:
            self.stats.sources_done += 1

    def close(self) -> None:
        self.flush()
        unfinished = [u for u, s in self._sources.items() if not s.complete()]
        if unfinished:
            # Rows of these sources never all arrived (a worker died mid-batch) or an environment fault stopped
            # them; a rerun will finish them.
            log.warning("%d source(s) not complete; rerun the job to finish them: %s", len(unfinished), unfinished[:5])

    def discard(self) -> None:
        """Drop the open shard (a run that stops without committing it): nothing is left in the temporary folder."""
        if self._tar is not None:
            self._tar.close()
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._tar, self._tmp = None, None


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()

"""The driver's side of the dataset sink: what is committed, per-source done markers, errors.

Exactly-once output from at-least-once processing:

1. The workers write each shard to ``shards/`` under a temporary name and rename it (``curation.sink.shards``);
   the driver receives its name and manifest rows only.
2. The driver then writes its manifest part to ``manifest/``: the manifest is the truth. A shard without a
   manifest part (the driver died between 1 and 2, or never took it) is an orphan and is deleted on the next start.
3. Errors seen so far go to ``errors/``, then ``done/`` markers for every source whose clips are all in committed
   shards, dropped or failed (or that failed as a whole). A failure that was not the source's fault
   (``curation.pipeline.faults``) never marks its source: the rerun processes it again. Until a source of the run
   completes with a clip kept or dropped, a source that failed wholly in a way no source is known to cause is
   held back unmarked: if ``SAME_WAY`` of them failed the same way, that is the job's fault (a setting that fails
   every source) and the job stops, marking none of them.

A clip is committed once: a shard holding clips that are already committed (a task Ray retried after its worker
died, a rerun of a half-committed source, a byte-identical copy of a source: clip ids come from the source's
content) is rewritten without them by a worker (``shards.repack``) before it is committed, or removed. The
copy's own marker names the copy it duplicates. Workers' small last shards are staged and merged the same way.

The writer runs under the output's lease (``common.lease``): ``check_lease`` is called before every commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from common import contract as C
from common.storage import Storage

from curation.config import ShardsConfig
from curation.pipeline.faults import JobStopped
from curation.pipeline.row import Row
from curation.sink import shards

log = logging.getLogger("curation")
REJECTED_EXAMPLES = 4  # dropped clips kept per filter (their metadata) for the report
SAME_WAY = 3  # sources failing one way before any source kept a clip: the job's fault, not theirs


@dataclass
class _Source:
    expected: int | None = None  # candidate clips, known once the summary row arrives
    settled: int = 0  # clips committed, dropped or failed
    pending: int = 0  # clips in shards not committed yet (staged, or waiting for a repack)
    failed: bool = False  # the whole source failed by its own fault
    clip_errors: int = 0  # clips that failed by the source's fault
    written: int = 0  # clips of it this run wrote
    dropped: int = 0  # clips of it a filter rejected
    retry: bool = False  # something failed by the environment's fault: the rerun processes the source again
    # How its failures went that no source is known to cause: (stage, error type, message without the source's name)
    unexplained: set[tuple[str, str, str]] = field(default_factory=set)
    duplicate_of: str | None = None  # a byte-identical source seen first
    streams: dict = field(default_factory=dict)  # the video stream read, of several (curation.video.decode)

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
    source_bytes: int = 0  # the sources' sizes, byte-identical copies included: each was read
    source_bytes_read: int = 0  # what scenes and encode pulled from storage for them: source_bytes when read once
    clips_written: int = 0
    clips_duplicate: int = 0
    clip_seconds: float = 0.0
    bytes_written: int = 0
    bytes_to_driver: int = 0  # what the driver received from the workers (manifest rows, errors, counts)
    shards_written: int = 0
    dropped: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    sources_duplicate: int = 0  # byte-identical copies of a source seen first
    environment: list[str] = field(default_factory=list)  # environment faults: their sources are left to the rerun
    job_faults: list[str] = field(default_factory=list)  # the job's faults (config, code): left to the rerun too
    sources: dict[str, dict] = field(default_factory=dict)  # uri -> its done marker, for every source this run settled
    motion_all: list[float] = field(default_factory=list)  # every candidate clip, kept or dropped
    samples: list[tuple[str, str]] = field(default_factory=list)  # (clip_id, shard) of the first clips committed
    rejected: dict[str, list[dict]] = field(default_factory=dict)  # filter -> a few dropped clips' metadata


class DatasetWriter:
    """The driver's side of the sink: decides what is committed. Workers write the shards (``curation.sink.shards``)
    and send ``shard`` rows; ``repack(pieces, keep)`` has a worker write a shard of the clips ``keep`` out of
    shards or staged tails ``pieces`` (URIs) and returns its ``shard`` row meta (``shards.repack``)."""

    def __init__(self, output: str, storage: Storage, cfg: ShardsConfig, sample_clips: int = 12,
                 check_lease: Callable[[], None] = lambda: None,
                 repack: Callable[[list[str], list[tuple[str, str]]], dict] | None = None):
        self.out = output.rstrip("/")
        self.storage = storage
        self.cfg = cfg
        self.sample_clips = sample_clips
        self.check_lease = check_lease
        self.repack = repack or (lambda pieces, keep: shards.repack(self.out, storage, pieces, keep))
        self.stats = RunStats()
        self.committed: set[str] = set()  # clip ids in the manifest
        self.committed_shards: set[str] = set()
        self.error_keys: set[tuple] = set()
        self.done: dict[str, str] = {}  # uri -> "ok" | "error"
        self._sources: dict[str, _Source] = {}
        self._owner: dict[str, str] = {}  # clip id -> the source that sent it first in this run
        self._sha1_owner: dict[str, str] = {}  # source sha1 -> the first source with that content
        self._errors: list[dict] = []
        self._staged: list[tuple[str, list[tuple[str, str]]]] = []  # tails to merge: (uri, (source, clip id) to keep)
        self._staged_bytes = 0.0
        self._touched: set[str] = set()  # sources whose counts changed since the last settle: the ones to check
        self._held: set[str] = set()  # complete sources that failed wholly and unexplained, not marked yet
        self._job_faults: dict[tuple, set[str]] = {}  # way -> sources that failed so by the job's fault
        self._proven = False  # a source completed with a clip kept or dropped: the job can work
        self._stopped = False  # by the same failure on SAME_WAY sources

    def path(self, *parts: str) -> str:
        return self.storage.join(self.out, *parts)

    # -- start-up ---------------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Clean up after a killed run and load what is already committed."""
        for d in (C.SHARDS_DIR, C.MANIFEST_DIR, C.ERRORS_DIR, C.DONE_DIR, C.STAGING_DIR):
            for tmp in self.storage.list_temporaries(self.path(d)):
                self.storage.remove(tmp)
        for uri in self.storage.list(self.path(C.STAGING_DIR)):  # tails never merged: their sources are not done
            self.storage.remove(uri)
        manifest = C.read_manifest(self.storage, self.out, ["clip_id", "source_sha1", "source_uri"])
        self.committed = set(manifest.column("clip_id").to_pylist())
        for sha1, uri in zip(manifest.column("source_sha1").to_pylist(), manifest.column("source_uri").to_pylist()):
            self._sha1_owner.setdefault(sha1, uri)
        self.committed_shards = {u.rsplit("/", 1)[-1].removesuffix(".tar")
                                 for u in C.committed_shards(self.storage, self.out)}
        for uri in self.storage.list(self.path(C.SHARDS_DIR), ".tar"):
            name = uri.rsplit("/", 1)[-1].removesuffix(".tar")
            if name not in self.committed_shards:
                log.warning("removing orphan shard %s (its manifest part was never committed)", name)
                self.storage.remove(uri)
        self.error_keys = {(r["uri"], r["clip_id"], r["stage"]) for r in C.read_errors(self.storage, self.out).to_pylist()}
        self.done = {m["uri"]: m["status"] for m in C.read_done_markers(self.storage, self.out)}

    # -- streaming ------------------------------------------------------------------------------------------
    def add(self, row: Row) -> None:
        kind, uri, meta = row.kind, row.source_uri, row.meta
        if kind == "shard":
            self._shard(meta)
        elif kind == "summary":
            self._touched.add(uri)
            self._summary(self._sources.setdefault(uri, _Source()), uri, meta)
        elif kind in ("dropped", "error"):
            src = self._claim(meta.get("clip_id"), uri)
            if src is None:
                return
            if kind == "error":
                self._error(src, meta)
            else:
                self.stats.motion_all.append(meta["motion"])
                self.stats.dropped[meta["dropped_by"]] += 1
                self._reject_example(meta)
                src.settled += 1
                src.dropped += 1
        else:
            raise ValueError(f"unexpected row kind {kind!r}")
        self._settle(self._touched)

    def _claim(self, clip_id: str | None, uri: str, clip: bool = False) -> _Source | None:
        """The source a row of a clip counts for, or None when the row is to be ignored: the clip was sent before
        by the same source (a task Ray retried after its worker died). A byte-identical copy's clip settles at once."""
        owner = self._owner.get(clip_id) if clip_id is not None else None
        if owner == uri:
            self.stats.clips_duplicate += clip
            return None
        src = self._sources.setdefault(uri, _Source())
        self._touched.add(uri)
        if owner is not None:
            src.settled += 1
            self.stats.clips_duplicate += clip
            return None
        if clip_id is not None:
            self._owner[clip_id] = uri
        return src

    def _summary(self, src: _Source, uri: str, meta: dict) -> None:
        src.expected = meta["num_clips"]
        self.stats.source_bytes += meta.get("source_bytes", 0)
        self.stats.source_bytes_read += meta.get("bytes_read", 0)
        if meta.get("video_streams", 1) > 1:
            src.streams = {"stream_index": meta["stream_index"], "video_streams": meta["video_streams"]}
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

    def _shard(self, meta: dict) -> None:
        """A shard a worker wrote: commit it, or the clips of it not committed yet, or stage it for a merge."""
        records = meta["records"]
        keep = []
        for r in records:
            src = self._claim(r["clip_id"], r["source_uri"], clip=True)
            if src is None:
                continue
            self.stats.motion_all.append(r["motion"])
            if r["clip_id"] in self.committed:  # committed by an earlier run
                self.stats.clips_duplicate += 1
                src.settled += 1
                continue
            keep.append(r)
            src.pending += 1
        folder = C.STAGING_DIR if meta["staged"] else C.SHARDS_DIR
        uri = self.path(folder, f"{meta['name']}.tar")
        if meta["staged"] and keep:
            self._staged.append((uri, [(r["source_uri"], r["clip_id"]) for r in keep]))
            self._staged_bytes += meta["bytes"] * len(keep) / len(records)
            if self._staged_bytes >= self.cfg.target_size_mb * 1e6:
                self._merge()
            return
        if keep and len(keep) == len(records):
            self._commit(meta["name"], records, meta["bytes"])
            return
        if keep:
            shard = self.repack([uri], [(r["source_uri"], r["clip_id"]) for r in keep])
            self._commit(shard["name"], shard["records"], shard["bytes"])
        # What is left holds only clips committed elsewhere; a retried task may have written a shard (or a staged
        # tail) that is committed or still waiting under this very name: those stay.
        if meta["name"] not in self.committed_shards and uri not in {u for u, _ in self._staged}:
            self.storage.remove(uri)

    def _merge(self) -> None:
        pieces, self._staged, self._staged_bytes = self._staged, [], 0.0
        shard = self.repack([u for u, _ in pieces], [clip for _, clips in pieces for clip in clips])
        self._commit(shard["name"], shard["records"], shard["bytes"])
        for uri, _ in pieces:
            self.storage.remove(uri)

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
            if fault == "stop":
                self.stats.environment.append(f"{where}: {meta['message']}")
                raise JobStopped(f"{where}: {meta['message']}")
            if fault == "job":
                self.stats.job_faults.append(f"{where}: {meta['message']}")
                log.error("the job's fault (its config or code), source left for the rerun: %s: %s", where,
                          meta["message"])
                if not self._proven:
                    self._stop_if_shared(self._job_faults.setdefault(_way(meta), set()), meta["uri"], _way(meta))
            else:
                self.stats.environment.append(f"{where}: {meta['message']}")
                log.warning("environment fault, source left for the rerun: %s: %s", where, meta["message"])
            return
        if not meta.get("explained", True):
            src.unexplained.add(_way(meta))
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

    # -- commit ---------------------------------------------------------------------------------------------
    def _commit(self, name: str, records: list[dict], size: int) -> None:
        """The shard ``name`` (already in shards/) joins the dataset: its manifest part is the commit point."""
        self.check_lease()
        table = pa.Table.from_pylist(records, schema=C.MANIFEST_SCHEMA)
        self.storage.write_atomic(self.path(C.MANIFEST_DIR, f"{name}.parquet"), _parquet(table))
        self.committed.update(r["clip_id"] for r in records)
        self.committed_shards.add(name)
        self.stats.clips_written += len(records)
        self.stats.shards_written += 1
        self.stats.bytes_written += size
        for r in records:
            src = self._sources[r["source_uri"]]
            self._touched.add(r["source_uri"])
            src.pending -= 1
            src.settled += 1
            src.written += 1
            self.stats.clip_seconds += r["end_s"] - r["start_s"]
            if len(self.stats.samples) < self.sample_clips:
                self.stats.samples.append((r["clip_id"], name))
        log.info("committed shard %s: %d clips, %.1f MB", name, len(records), size / 1e6)

    def _write_errors(self) -> None:
        """Write the errors seen so far, but not those of held sources (``_settle``)."""
        errors = [e for e in self._errors if e["uri"] not in self._held]
        self._errors = [e for e in self._errors if e["uri"] in self._held]
        if not errors:
            return
        self.check_lease()
        table = pa.Table.from_pylist(errors, schema=C.ERRORS_SCHEMA)
        digest = hashlib.sha1("\n".join(f"{e['uri']}|{e['clip_id']}|{e['stage']}" for e in errors).encode())
        self.storage.write_atomic(self.path(C.ERRORS_DIR, f"errors-{digest.hexdigest()[:20]}.parquet"), _parquet(table))

    def _stop_if_shared(self, sources: set[str], uri: str, way: tuple[str, str, str]) -> None:
        """Stop the job once ``SAME_WAY`` sources failed ``way``, before any kept a clip: a source's own fault
        differs from source to source; a setting that fails them all does not."""
        sources.add(uri)
        if len(sources) >= SAME_WAY and not self._stopped:
            self._stopped = True
            raise JobStopped(f"the first {len(sources)} sources to fail all failed in {way[0]} the same way before "
                             f"any kept a clip ({way[1]}: {way[2]}): that is the job's fault (its config or code), "
                             "not theirs; none was marked done: fix it and rerun")

    def _settle(self, uris) -> None:
        """Mark done each of ``uris`` whose clips are all committed, dropped or failed, after the errors seen so far.
        Only sources a row has just changed can have completed: checking every open source per row would cost the
        driver time in proportion to the sources in flight. Until a source keeps or drops a clip, one that failed
        wholly in unexplained ways is held back, and ``SAME_WAY`` of them failing one way stop the job."""
        complete = [uri for uri in sorted(uris) if uri in self._sources and self._sources[uri].complete()]
        self._touched = set()
        if not self._proven and any(self._sources[u].written + self._sources[u].dropped for u in complete):
            self._proven = True
            complete += sorted(self._held)
            self._held = set()
        if not self._proven:
            for uri in complete:
                src = self._sources[uri]
                if src.unexplained and src.written + src.dropped == 0 and uri not in self._held:
                    self._held.add(uri)
                    for way in src.unexplained:
                        self._stop_if_shared({u for u in self._held if way in self._sources[u].unexplained}, uri, way)
            complete = [uri for uri in complete if uri not in self._held]
        if complete and self._errors:
            self._write_errors()
        for uri in complete:
            self._mark_done(uri, self._sources[uri])

    def _mark_done(self, uri: str, src: _Source) -> None:
        # A source with a failed clip is not "ok": retry_errors=true gives its failed clips another try.
        status = "error" if src.failed or src.clip_errors else "ok"
        marker = {"uri": uri, "status": status, "clips": src.expected or 0, "written": src.written,
                  "dropped": src.dropped, "clip_errors": src.clip_errors}
        if src.duplicate_of is not None:
            marker["duplicate_of"] = src.duplicate_of
        marker.update(src.streams)
        self.stats.sources[uri] = marker
        self.storage.write_atomic(C.done_marker_uri(self.storage, self.out, uri), json.dumps(marker).encode())
        self.done[uri] = status
        del self._sources[uri]
        if src.failed:
            self.stats.sources_failed += 1
        else:
            self.stats.sources_done += 1

    def close(self) -> None:
        """Merge the staged tails into the last shard, write the errors left, mark what is complete done."""
        if self._staged:
            self._merge()
        if self._stopped:  # the failures held are the job's, not their sources'
            self._errors = [e for e in self._errors if e["uri"] not in self._held]
        elif not self._proven:  # too few failures to tell: their sources' own
            self._proven = True
            held, self._held = self._held, set()
            self._settle(held)
        if self._errors:
            self._write_errors()
        self._settle(list(self._sources))
        unfinished = [u for u, s in self._sources.items() if not s.complete()]
        if unfinished:
            # Rows of these sources never all arrived (a worker died mid-batch) or an environment fault stopped
            # them; a rerun will finish them.
            log.warning("%d source(s) not complete; rerun the job to finish them: %s", len(unfinished), unfinished[:5])


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _way(meta: dict) -> tuple[str, str, str]:
    """How an error row failed, the same for every source it happens to: (stage, type, message without the source)."""
    uri = meta["uri"]
    message = meta["message"].replace(uri, "<source>").replace(uri.rsplit("/", 1)[-1], "<source>")
    return meta["stage"], meta["error_type"], message

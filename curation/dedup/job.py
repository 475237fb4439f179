"""``python -m curation dedup OUTPUT``: near-duplicate groups over a committed dataset, as a Ray job.

Per signal (``signals``: the fingerprint every clip has, the CLIP embedding of clips the aesthetic stage scored),
the clips' vectors are clustered by k-means (fit on a sample chosen by clip id, about ``cluster_size`` clips per
cluster), each clip joins its ``probes`` nearest clusters (a pair on a cluster border still meets), and every pair
inside a cluster is compared exactly, by matrix products, in a Ray task per cluster. Pairs at or above a
signal's threshold join groups (connected components over both signals); each group keeps one clip
(``DedupConfig``). The cost is about clips x cluster_size x probes similarities, spread over the cluster's CPUs;
the driver holds the vectors (fingerprints: 252 bytes a clip; embeddings: 2 bytes a dimension) and the pairs found.

The result is one file beside the manifest (``common.contract.DEDUP_SCHEMA``), replaced atomically; the shards are
not touched. Resume: each task's result is kept under ``dedup/work/<key>/``, the key made of the manifest's parts
and the settings, and a rerun skips the tasks whose file exists; k-means is seeded and fit on a sample chosen by
clip id, so a rerun finds the same groups. New manifest parts (new sources) make a new key: the groups are
computed again over every clip, old and new.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import contract as C
from common.lease import Lease
from common.ray_session import ray_session
from common.storage import Storage

from curation.config import DedupConfig, DedupJob
from curation.dedup import signals as S

WORK_DIR = "work"
SAMPLE_PER_CLUSTER = 40  # k-means is fit on this many clips per cluster (at most all of them)
BLOCK = 512  # rows of one similarity matrix product: bounds a task's memory
CHUNK = 65536  # rows converted at a time in the driver: bounds its float32 copies


@dataclass(frozen=True)
class Signal:
    name: str  # the manifest column, and the DedupConfig threshold's prefix
    parse: Callable[[list[str]], np.ndarray]  # manifest texts -> vectors compared
    space: Callable[[np.ndarray], np.ndarray]  # vectors -> what k-means clusters
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _bits(texts: list[str]) -> np.ndarray:
    """(N, FRAMES * BITS) int8 in {-1, 1}, made a chunk at a time (the uint64 intermediate is 32x larger)."""
    hashes = S.fingerprint_array(texts)
    out = np.empty((len(hashes), S.FRAMES * S.BITS), dtype=np.int8)
    for lo in range(0, len(hashes), CHUNK):
        out[lo : lo + CHUNK] = S.fingerprint_bits(hashes[lo : lo + CHUNK])
    return out


SIGNALS = (
    Signal("fingerprint", _bits, lambda v: S.mirror_invariant(v.astype(np.float32)),
           lambda a, b: S.fingerprint_similarity(a.astype(np.float32), b.astype(np.float32))),
    Signal("embedding", lambda t: S.embedding_array(t).astype(np.float16), lambda v: v.astype(np.float32),
           lambda a, b: a.astype(np.float32) @ b.astype(np.float32).T),
)


@dataclass
class DedupResult:
    clips: int = 0
    groups: int = 0
    removed: int = 0
    per_signal: dict = field(default_factory=dict)  # name -> clips with it, unreadable, clusters, pairs, tasks run
    seconds: float = 0.0
    record: str = ""
    page: str = ""  # its page of groups, with frames


def _readable(signal: Signal, texts: list) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(indices of the clips with a readable value, their vectors, messages for unreadable ones)."""
    present = [i for i, t in enumerate(texts) if t is not None]
    if not present:
        return np.zeros(0, np.int64), np.zeros((0, 0)), []
    try:
        return np.asarray(present, dtype=np.int64), signal.parse([texts[i] for i in present]), []
    except ValueError:
        pass
    good, bad = [], []
    for i in present:  # one unreadable value: find every one, keep the rest
        try:
            signal.parse([texts[i]])
            good.append(i)
        except ValueError as e:
            bad.append((i, str(e)))
    return np.asarray(good, dtype=np.int64), signal.parse([texts[i] for i in good]), bad


def _clusters(signal: Signal, vectors: np.ndarray, cfg: DedupConfig) -> list[np.ndarray]:
    """Row indices of ``vectors`` per cluster, each row in its ``probes`` nearest clusters (sorted, non-empty)."""
    n = len(vectors)
    k = max(1, round(n / cfg.cluster_size))
    if k == 1:
        return [np.arange(n)]
    from sklearn.cluster import KMeans

    sample = np.sort(np.random.default_rng(cfg.seed).permutation(n)[: min(n, k * SAMPLE_PER_CLUSTER)])
    centres = KMeans(n_clusters=k, n_init=1, random_state=cfg.seed).fit(signal.space(vectors[sample])).cluster_centers_
    probes = min(cfg.probes, k)
    nearest = np.empty((n, probes), dtype=np.int64)
    c2 = (centres**2).sum(1)
    for lo in range(0, n, CHUNK):
        d = c2[None, :] - 2 * signal.space(vectors[lo : lo + CHUNK]) @ centres.T  # + |x|^2, alike for every centre
        nearest[lo : lo + CHUNK] = np.argpartition(d, probes - 1, axis=1)[:, :probes] if probes < k else np.argsort(d, 1)
    rows = np.repeat(np.arange(n), probes)
    order = np.lexsort((rows, nearest.ravel()))
    cuts = np.searchsorted(nearest.ravel()[order], np.arange(k + 1))
    return [rows[order[a:b]] for a, b in zip(cuts[:-1], cuts[1:]) if b - a > 1]


def _keep_nearest(best: dict, a: np.ndarray, b: np.ndarray, sim: np.ndarray) -> dict:
    """``best`` (clip -> (nearest clip, similarity)) updated with the candidates ``b[k]`` of ``a[k]``."""
    for x, y, s in zip(a.tolist(), b.tolist(), sim.tolist()):
        if s > best.get(x, (None, -np.inf))[1]:
            best[x] = (y, s)
    return best


def compare(signal_name: str, threshold: float, clusters: list[tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    """One task: every pair inside each cluster ((indices, vectors) each). Rows: ``a``, ``b`` (indices), the
    ``similarity``, ``pair`` (true: at or above the threshold, a < b; false: ``b`` is the nearest clip ``a`` met in
    these clusters)."""
    signal = next(s for s in SIGNALS if s.name == signal_name)
    pairs, best = [], {}
    for idx, vec in clusters:
        for lo in range(0, len(idx), BLOCK):
            sim = signal.similarity(vec[lo : lo + BLOCK], vec)
            rows = np.arange(lo, min(lo + BLOCK, len(idx)))
            sim[rows - lo, rows] = -np.inf  # not itself
            j = sim.argmax(1)
            _keep_nearest(best, idx[rows], idx[j], sim[rows - lo, j])
            r, c = np.nonzero(sim >= threshold)
            keep = idx[rows[r]] < idx[c]
            pairs.append((idx[rows[r]][keep], idx[c][keep], sim[r, c][keep]))
    a = np.concatenate([p[0] for p in pairs] + [np.fromiter(best, np.int64, len(best))])
    b = np.concatenate([p[1] for p in pairs] + [np.asarray([v[0] for v in best.values()], np.int64)])
    s = np.concatenate([p[2] for p in pairs] + [np.asarray([v[1] for v in best.values()], np.float32)])
    flag = np.concatenate([np.ones(sum(len(p[0]) for p in pairs), bool), np.zeros(len(best), bool)])
    return pa.table({"a": a, "b": b, "similarity": s.astype(np.float32), "pair": flag})


def snapshot_key(storage: Storage, output: str, cfg: DedupConfig) -> str:
    """Names what a run computes: the committed manifest parts (immutable once committed) and the settings."""
    parts = sorted(u.rsplit("/", 1)[-1] for u in storage.list(storage.join(output, C.MANIFEST_DIR), ".parquet"))
    return hashlib.sha1(json.dumps([parts, asdict(cfg)]).encode()).hexdigest()[:16]


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _progress(name: str, done: int, total: int, t0: float) -> None:
    rate = done / max(time.time() - t0, 1e-9)
    eta = (total - done) / rate if rate else float("inf")
    print(f"[{time.time() - t0:6.0f}s] {name}: tasks {done}/{total}, {rate:.2f}/s, ETA {eta:.0f}s", flush=True)


def _run_signal(signal: Signal, threshold: float, vectors: np.ndarray, index: np.ndarray, cfg: DedupConfig,
                storage: Storage, work: str, check: Callable[[], None]) -> tuple[pa.Table, dict]:
    """Pairs and nearest records of one signal over the clips ``index`` (rows of the snapshot), through the
    tasks' files under ``work`` (written here, as each task ends; existing ones are not run again)."""
    import ray

    clusters = _clusters(signal, vectors, cfg)
    batches = [[c] for c in clusters]  # a task per cluster: as many tasks as clusters, for a cluster's CPUs
    uris = [storage.join(work, f"{signal.name}-{i:05d}.parquet") for i in range(len(batches))]
    have = set(storage.list(work, ".parquet"))
    todo = [i for i, u in enumerate(uris) if u not in have]
    tasks_run = len(todo)
    remote = ray.remote(num_cpus=1)(compare)
    # Tasks are sent a few per CPU at a time: their vectors wait in the object store only while they run.
    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    running: dict = {}
    t0, done = time.time(), 0
    while todo or running:
        while todo and len(running) < window:
            i = todo.pop(0)
            running[remote.remote(signal.name, threshold, [(index[c], vectors[c]) for c in batches[i]])] = i
        ready, _ = ray.wait(list(running), num_returns=1, timeout=5.0)
        for ref in ready:
            i = running.pop(ref)
            check()
            storage.write_atomic(uris[i], _parquet(ray.get(ref)))
            done += 1
        _progress(signal.name, done, done + len(todo) + len(running), t0)
    tables = [pq.read_table(pa.BufferReader(storage.read_bytes(u))) for u in uris]
    table = pa.concat_tables(tables) if tables else compare(signal.name, threshold, [])
    stats = {"clips": len(index), "clusters": len(clusters), "tasks": len(batches), "tasks_run": tasks_run,
             "pairs": int(pc.sum(table.column("pair")).as_py() or 0)}
    return table, stats


def _groups(n: int, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Component label per clip over every pair (a clip without a pair is its own component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a = np.concatenate([p[0] for p in pairs] or [np.zeros(0, np.int64)])
    b = np.concatenate([p[1] for p in pairs] or [np.zeros(0, np.int64)])
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _kept(labels: np.ndarray, rows: pa.Table) -> np.ndarray:
    """Per clip, the row of the clip its group keeps: the highest aesthetic score, then the longest, then the
    largest frame, then the smallest clip id (rows are sorted by clip id)."""
    aesthetic = np.nan_to_num(rows.column("aesthetic").to_numpy(zero_copy_only=False).astype(float), nan=-np.inf)
    fps = rows.column("fps").to_numpy(zero_copy_only=False).astype(float)
    seconds = rows.column("num_frames").to_numpy(zero_copy_only=False) / np.where(fps > 0, fps, 1)
    pixels = rows.column("width").to_numpy(zero_copy_only=False) * rows.column("height").to_numpy(zero_copy_only=False)
    order = np.lexsort((np.arange(len(labels)), -pixels, -seconds, -aesthetic, labels))  # best first in each group
    first = np.ones(len(order), bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    best = np.empty(labels.max() + 1 if len(labels) else 0, np.int64)
    best[labels[order][first]] = order[first]
    return best[labels]


def dedup(job: DedupJob) -> DedupResult:
    """Run the job under the output's lease (``common.lease``: no curation run writes the manifest meanwhile)."""
    t0 = time.time()
    storage, cfg, out = Storage(job.storage), job.dedup, job.output.rstrip("/")
    lease = Lease(storage, out)
    lease.acquire()
    try:
        return _dedup(storage, cfg, out, job, lease.check, t0)
    finally:
        lease.release()


def _dedup(storage: Storage, cfg: DedupConfig, out: str, job: DedupJob, check: Callable[[], None],
           t0: float) -> DedupResult:
    key = snapshot_key(storage, out, cfg)
    columns = ["clip_id", "fingerprint", "embedding", "aesthetic", "fps", "num_frames", "width", "height"]
    rows = C.read_manifest(storage, out, columns)
    rows = rows.take(pc.sort_indices(rows, [("clip_id", "ascending")]))
    ids = rows.column("clip_id").to_pylist()
    if not ids:
        raise ValueError(f"{out}: no committed clip to deduplicate (no manifest part)")
    result = DedupResult(clips=len(ids))
    work = storage.join(out, C.DEDUP_DIR, WORK_DIR, key)
    found, nearest = [], {}
    print(f"{len(ids)} clips; work files: {work}", flush=True)
    with ray_session(job.ray.address, job.ray.num_cpus):
        for signal in SIGNALS:
            threshold = getattr(cfg, f"{signal.name}_similarity")
            if threshold is None:
                continue
            index, vectors, bad = _readable(signal, rows.column(signal.name).to_pylist())
            for i, message in bad[:3]:
                print(f"clip {ids[i]}: {signal.name} unreadable, left out of that signal: {message}", flush=True)
            table, stats = (_run_signal(signal, threshold, vectors, index, cfg, storage, work, check) if len(index) > 1
                            else (compare(signal.name, threshold, []),
                                  {"clips": len(index), "clusters": 0, "tasks": 0, "tasks_run": 0, "pairs": 0}))
            result.per_signal[signal.name] = {**stats, "unreadable": len(bad)}
            is_pair = table.column("pair").to_numpy(zero_copy_only=False)
            a, b = table.column("a").to_numpy(), table.column("b").to_numpy()
            sim = table.column("similarity").to_numpy()
            found.append((a[is_pair], b[is_pair]))
            nearest[signal.name] = _keep_nearest({}, a[~is_pair], b[~is_pair], sim[~is_pair])
    labels = _groups(len(ids), found)
    kept = _kept(labels, rows)
    sizes = np.bincount(labels)
    grouped = sizes[labels] > 1
    record = {
        "clip_id": ids,
        "group": [ids[k] if g else None for k, g in zip(kept, grouped)],
        "kept": (kept == np.arange(len(ids))).tolist(),
    }
    for signal in SIGNALS:
        best = nearest.get(signal.name, {})
        record[f"{signal.name}_nearest"] = [ids[best[i][0]] if i in best else None for i in range(len(ids))]
        record[f"{signal.name}_similarity"] = [float(best[i][1]) if i in best else None for i in range(len(ids))]
    check()
    uri = storage.join(out, C.DEDUP_DIR, C.DEDUP_FILE)
    storage.write_atomic(uri, _parquet(pa.Table.from_pydict(record, schema=C.DEDUP_SCHEMA)))
    result.groups, result.removed = int((sizes > 1).sum()), int(len(ids) - sum(record["kept"]))
    result.seconds, result.record = time.time() - t0, uri
    storage.write_atomic(storage.join(out, C.DEDUP_DIR, "run.json"), json.dumps(
        {"key": key, "settings": asdict(cfg), **asdict(result)}, indent=1).encode())
    storage.remove_tree(storage.join(out, C.DEDUP_DIR, WORK_DIR))  # every run's task files: the record has them
    from curation.tools.report import write_dedup_page

    result.page = write_dedup_page(storage, out)
    return result


def format_result(r: DedupResult) -> str:
    lines = [f"{r.clips} clips: {r.groups} near-duplicate group(s), {r.removed} clip(s) removed (kept one per group), "
             f"{r.seconds:.1f} s"]
    for name, s in r.per_signal.items():
        lines.append(f"  {name}: {s['clips']} clips, {s['clusters']} cluster(s), {s['pairs']} pair(s) at "
                     f"or above the threshold, {s['tasks_run']} task(s) run" +
                     (f", {s['unreadable']} unreadable" if s["unreadable"] else ""))
    lines.append(f"record: {r.record}\ngroups: {r.page}")
    return "\n".join(lines)

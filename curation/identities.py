"""``python -m curation identities OUTPUT``: subjects matched across the clips of each source, as one record beside
the manifest (``common.contract.IDENTITY_SCHEMA``), replaced atomically; the shards are not touched.

Every kept subject carries the mean image embedding of its crops (``curation.models.references``). Within a source,
each pair of its clips is matched one to one (an assignment maximising the cosine similarity), and a pair at or
above ``identities.similarity`` (of equal labels, with ``same_label``) is one identity; identities are the
connected components of those matches. Each subject then gets, as references from other clips, the crops of the
other clips' subjects of its identity, most similar first: their best other-frame reference, or their keyframe crop,
with the shard and byte range that hold it, so a trainer reads one crop without the rest of its shard.

The driver reads the manifest's subject columns (Arrow: about 2.7 KB per subject with a 768-d embedding, 4 GB at
1.46 M clips of two subjects) and turns one source's clips at a time into Python objects.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.optimize import linear_sum_assignment

from common import contract as C
from common.lease import Lease
from common.storage import Storage

from curation.config import IdentitiesConfig, IdentitiesJob
from curation.dedup.signals import embedding_array

COLUMNS = ["clip_id", "source_sha1", "shard", "subjects", "subject_tracks", "member_offsets"]


@dataclass(frozen=True)
class SubjectRef:
    clip_id: str
    subject: int
    label: str
    crop: dict  # contract.OTHER_REFERENCE's member, shard, offset, size


def _crop(row: dict, k: int) -> dict | None:
    """Where subject ``k``'s best crop for another clip lies: its first (best) reference, or its keyframe crop."""
    refs = row["subject_tracks"][k]["references"]
    member = refs[0]["member"] if refs else C.subject_member(k)
    where = next((o for o in row["member_offsets"] or [] if o["member"] == member), None)
    if where is None:
        return None
    return {"member": member, "shard": row["shard"], "offset": where["offset"], "size": where["size"]}


def source_subjects(rows: list[dict]) -> tuple[list[SubjectRef], np.ndarray]:
    """The subjects of one source's clips that have an embedding and a crop, and their (N, D) embeddings."""
    refs, texts = [], []
    for row in rows:
        for k, (s, t) in enumerate(zip(row["subjects"] or [], row["subject_tracks"] or [])):
            crop = _crop(row, k)
            if t["embedding"] and crop is not None:
                refs.append(SubjectRef(row["clip_id"], k, s["label"], crop))
                texts.append(t["embedding"])
    return refs, (embedding_array(texts) if texts else np.zeros((0, 0), np.float32))


def match(refs: list[SubjectRef], vectors: np.ndarray, cfg: IdentitiesConfig) -> tuple[list[int], np.ndarray]:
    """The identity of each subject (the index of its component's first subject) and the similarity matrix."""
    sim = vectors @ vectors.T if len(refs) else np.zeros((0, 0), np.float32)
    parent = list(range(len(refs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_clip: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(refs):
        by_clip[r.clip_id].append(i)
    clips = sorted(by_clip)
    for a_at, a in enumerate(clips):
        for b in clips[a_at + 1:]:
            ia, ib = by_clip[a], by_clip[b]
            s = sim[np.ix_(ia, ib)].copy()
            if cfg.same_label:
                s[np.array([[refs[i].label != refs[j].label for j in ib] for i in ia])] = -1.0
            rows, cols = linear_sum_assignment(-s)
            for r, c in zip(rows, cols):
                if s[r, c] >= cfg.similarity:
                    x, y = find(ia[r]), find(ib[c])
                    parent[max(x, y)] = min(x, y)
    return [find(i) for i in range(len(refs))], sim


def source_record(rows: list[dict], cfg: IdentitiesConfig) -> list[dict]:
    """IDENTITY_SCHEMA rows for one source's clips."""
    refs, vectors = source_subjects(rows)
    roots, sim = match(refs, vectors, cfg)
    members: dict[int, list[int]] = defaultdict(list)
    for i, root in enumerate(roots):
        members[root].append(i)
    out = []
    for i, r in enumerate(refs):
        others = sorted((j for j in members[roots[i]] if refs[j].clip_id != r.clip_id), key=lambda j: (-sim[i, j], j))
        first = refs[roots[i]]
        out.append({
            "clip_id": r.clip_id, "subject": r.subject, "identity": f"{first.clip_id}/{first.subject}",
            "others": [{"clip_id": refs[j].clip_id, "subject": refs[j].subject, **refs[j].crop,
                        "similarity": float(sim[i, j])} for j in others[:cfg.max_others]],
        })
    return out


def identities(job: IdentitiesJob) -> dict:
    """Run the job under the output's lease (``common.lease``: no curation run writes the manifest meanwhile)."""
    storage, out = Storage(job.storage), job.output.rstrip("/")
    lease = Lease(storage, out)
    lease.acquire()
    try:
        return write_identities(out, storage, job.identities, lease.check)
    finally:
        lease.release()


def write_identities(output: str, storage: Storage, cfg: IdentitiesConfig, check_lease=lambda: None) -> dict:
    """Write the identity record of the dataset at ``output``; returns counts for the summary."""
    manifest = C.read_manifest(storage, output, COLUMNS)
    sha1 = np.asarray(manifest.column("source_sha1").to_pylist(), dtype=object)
    ids = np.asarray(manifest.column("clip_id").to_pylist(), dtype=object)
    order = np.lexsort((ids, sha1))  # by source, then clip id: the record does not depend on the manifest's order
    bounds = np.flatnonzero(sha1[order][1:] != sha1[order][:-1]) + 1
    record = []
    for group in np.split(order, bounds) if len(order) else []:
        record += source_record(manifest.take(group).to_pylist(), cfg)
    table = pa.Table.from_pylist(record, schema=C.IDENTITY_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    check_lease()
    storage.write_atomic(storage.join(output, C.IDENTITY_DIR, C.IDENTITY_FILE), buf.getvalue())
    sizes = defaultdict(int)
    for r in record:
        sizes[r["identity"]] += 1
    return {"clips": manifest.num_rows, "sources": len(set(sha1)), "subjects": len(record),
            "identities": len(sizes), "across_clips": sum(1 for n in sizes.values() if n > 1),
            "subjects_with_other_clip_references": sum(1 for r in record if r["others"])}


def format_result(r: dict) -> str:
    return (f"{r['clips']} clips of {r['sources']} source(s): {r['subjects']} subjects, {r['identities']} identities, "
            f"{r['across_clips']} of them seen in more than one clip; {r['subjects_with_other_clip_references']} "
            "subjects have references from other clips")

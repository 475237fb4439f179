"""Shared checks for end-to-end curation runs: the output must satisfy the dataset contract."""

import io
import json
import tarfile

import av

from common import contract as C
from common.storage import Storage


def run_local(cfg, stage_classes, sources: list[str] = (), rows: list | None = None) -> list:
    """The stages over ``rows``, or over ``sources`` (URIs), in this process: the rows they send on."""
    from curation.pipeline.row import Row
    from curation.run.executor import Chain

    with Chain(cfg, stage_classes) as chain:
        return list(chain(rows if rows is not None else [Row("source", uri, {}) for uri in sources]))


def run_cpu_stages(path, *overrides, stages=("scenes", "encode")) -> list:
    """The CPU stages (scenes with its filters, encode) on one source in this process, with the demo's CPU settings
    and adaptive detection unless overridden: the rows they send to the writer."""
    from curation.config import load_job
    from curation.stages import CPU_STAGES

    cfg = load_job(None, ["caption.enabled=false", "aesthetic.enabled=false", "scenes.min_clip_s=1", *overrides],
                   input="x", output="unused")
    return run_local(cfg, [s for s in CPU_STAGES if s.name in stages], [str(path)])


def send(writer, rows: list) -> None:
    """``rows`` as one worker task sends them: through the shard sink (shards written), then into the driver's writer."""
    from curation.sink.shards import ShardSink

    for row in ShardSink(writer.out, writer.storage, writer.cfg)(rows):
        writer.add(row)


def manifest(out: str, storage: Storage | None = None):
    storage = storage or Storage()
    return C.read_manifest(storage, out)


def errors(out: str, storage: Storage | None = None):
    return C.read_errors(storage or Storage(), out)


def check_contract(out: str, storage: Storage | None = None, decode: bool = True) -> dict[str, dict]:
    """Every manifest row is in its shard exactly once with its own JSON and (``decode``) a decodable mp4 of its
    frame count; no shard holds anything the manifest does not list. Returns the manifest rows by clip id."""
    storage = storage or Storage()
    rows = manifest(out, storage).to_pylist()
    ids = [r["clip_id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate clips in the manifest"
    by_id = {r["clip_id"]: r for r in rows}
    seen = set()
    for uri in storage.list(storage.join(out, C.SHARDS_DIR), ".tar"):
        shard = uri.rsplit("/", 1)[-1].removesuffix(".tar")
        with storage.open(uri) as f:
            raw = f.read()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        keys = {name.split(".", 1)[0] for name in members}
        for key in keys:
            assert key in by_id and by_id[key]["shard"] == shard, f"{key} in {shard} is not in the manifest"
            assert key not in seen
            seen.add(key)
            meta = json.loads(members[f"{key}.json"])
            # the JSON is the manifest row but where its crops lie in the tar, known once the tar is written
            offsets = by_id[key]["member_offsets"]
            assert meta.pop("member_offsets") is None
            assert meta == json.loads(json.dumps({k: v for k, v in by_id[key].items() if k != "member_offsets"}))
            assert [o["member"] for o in offsets] == C.png_members(meta)
            for o in offsets:
                assert raw[o["offset"]:o["offset"] + o["size"]] == members[f"{key}.{o['member']}"]
            if decode:
                with av.open(io.BytesIO(members[f"{key}.mp4"])) as c:
                    n = sum(1 for _ in c.decode(video=0))
                assert n == meta["num_frames"]
    assert seen == set(by_id), "manifest rows without a shard member"
    return by_id

"""Subject references in the dataset: crop byte ranges in the manifest, the identities job across a source's clips,
and what stats and validate say of them; on datasets written by curation's own shard sink and writer."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import contract as C
from common.storage import Storage
from curation.__main__ import main
from curation.config import ShardsConfig
from curation.dedup.signals import encode_embedding
from curation.pipeline.row import Row
from curation.sink.shards import ShardSink
from curation.sink.writer import DatasetWriter

from .data_fixtures import Clip, clip_row, subject_png


def _unit(seed: int, dim: int = 16) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim)
    return v / np.linalg.norm(v)


def subject_clip(clip_id: str, source: str, subjects: list[tuple[str, int, int]]) -> Row:
    """A clip of ``source`` with subjects (label, identity seed, references): each subject's embedding is its
    identity's vector plus a little noise, its crops distinct discs."""
    row = clip_row(Clip(clip_id, 32, 24, num_subjects=len(subjects)))
    meta = {**row.meta, "source_uri": source, "source_sha1": source.encode().hex().ljust(40, "0")[:40],
            "subject_grounding": [{"label": label, "status": "grounded", "subject": k}
                                  for k, (label, _, _) in enumerate(subjects)] +
                                 [{"label": "unicorn", "status": "not_found", "subject": None}]}
    tracks, refs = [], []
    for k, (label, seed, n) in enumerate(subjects):
        meta["subjects"][k]["label"] = label
        noise = np.random.default_rng(hash((clip_id, k)) % 2**32).normal(scale=0.05, size=16)
        vector = _unit(seed) + noise
        tracks.append({"track": [], "references": [
            {"frame": 20 + r, "member": C.reference_member(k, r), "quality": 0.9, "in_window": False}
            for r in range(n)], "embedding": encode_embedding(vector / np.linalg.norm(vector))})
        refs += [subject_png(6 + 2 * r, 10 + k) for r in range(n)]
    meta["subject_tracks"] = tracks
    return row.replace(meta=meta, source_uri=source, pngs=row.pngs + refs)


CLIPS = [  # two sources; the dog (seed 1) in three clips of the first, a cat (seed 2) in two, a dog of its own (3)
    ("a1", "/v/a.mp4", [("dog", 1, 2), ("cat", 2, 1)]),
    ("a2", "/v/a.mp4", [("cat", 2, 0), ("dog", 1, 1)]),
    ("a3", "/v/a.mp4", [("dog", 1, 2)]),
    ("a4", "/v/a.mp4", [("dog", 3, 1)]),
    ("b1", "/v/b.mp4", [("dog", 1, 1)]),  # the same vector in another source: never matched across sources
]


def write(out, shards: ShardsConfig) -> None:
    storage = Storage()
    writer = DatasetWriter(str(out), storage, shards)
    writer.recover()
    rows = []
    for source in ("/v/a.mp4", "/v/b.mp4"):
        mine = [subject_clip(*c) for c in CLIPS if c[1] == source]
        rows += mine + [Row("summary", source, {"num_clips": len(mine), "duration_s": 1.0})]
    for row in ShardSink(str(out), storage, shards)(rows):
        writer.add(row)
    writer.close()


@pytest.fixture(scope="module", params=["direct", "merged"])
def dataset(request, tmp_path_factory):
    """Shards written as they fill, or staged tails merged by a repack: both must record where the crops lie."""
    out = tmp_path_factory.mktemp("identities") / "ds"
    direct = request.param == "direct"
    write(out, ShardsConfig(max_clips=2, tail_fraction=0 if direct else 1, target_size_mb=0.001 if direct else 100))
    return out


def test_member_offsets_give_each_crop_by_range(dataset):
    rows = C.read_manifest(Storage(), str(dataset)).to_pylist()
    assert len(rows) == len(CLIPS)
    for r in rows:
        with tarfile.open(dataset / "shards" / f"{r['shard']}.tar") as t:
            members = {m.name.split(".", 1)[1]: t.extractfile(m).read() for m in t.getmembers()
                       if m.name.startswith(r["clip_id"] + ".")}
        assert [o["member"] for o in r["member_offsets"]] == C.png_members(r)
        raw = (dataset / "shards" / f"{r['shard']}.tar").read_bytes()
        for o in r["member_offsets"]:
            assert raw[o["offset"]: o["offset"] + o["size"]] == members[o["member"]]
        json_row = json.loads(members[C.JSON])
        assert json_row["member_offsets"] is None  # the tar's JSON is written before the offsets are known


def test_identities_match_within_a_source_and_point_at_the_other_clips_crops(dataset, capsys):
    assert main(["identities", str(dataset)]) == 0
    assert "identities" in capsys.readouterr().out
    record = {(r["clip_id"], r["subject"]): r for r in C.read_identities(Storage(), str(dataset)).to_pylist()}
    assert len(record) == sum(len(c[2]) for c in CLIPS)
    dog = {record[k]["identity"] for k in [("a1", 0), ("a2", 1), ("a3", 0)]}
    assert len(dog) == 1 and record[("a1", 1)]["identity"] == record[("a2", 0)]["identity"] not in dog
    assert record[("a4", 0)]["identity"] not in dog and not record[("a4", 0)]["others"]  # another dog
    assert record[("b1", 0)]["identity"] not in dog and not record[("b1", 0)]["others"]  # another source
    others = record[("a1", 0)]["others"]
    assert {o["clip_id"] for o in others} == {"a2", "a3"}
    assert others == sorted(others, key=lambda o: -o["similarity"])
    by_id = {r["clip_id"]: r for r in C.read_manifest(Storage(), str(dataset)).to_pylist()}
    for o in others:
        # the other clip's best reference (its first), or its keyframe crop when it has none
        tracks = by_id[o["clip_id"]]["subject_tracks"][o["subject"]]["references"]
        assert o["member"] == (tracks[0]["member"] if tracks else C.subject_member(o["subject"]))
        raw = (dataset / "shards" / f"{o['shard']}.tar").read_bytes()
        assert raw[o["offset"]:o["offset"] + 8] == b"\x89PNG\r\n\x1a\n"
    assert main(["validate", str(dataset)]) == 0, capsys.readouterr().out


def test_stats_give_references_and_the_grounded_share_per_label(dataset, capsys):
    assert main(["identities", str(dataset)]) == 0
    capsys.readouterr()
    assert main(["stats", str(dataset), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    refs = s["references"]
    assert refs["subjects"] == 7 and refs["with_other_frames"] == 6 and refs["references"] == 8
    assert refs["identity_record"] and refs["identities_across_clips"] == 2 and refs["with_other_clips"] == 5
    g = s["grounding"]
    assert g["dog"]["named"] == 5 and g["dog"]["grounded_share"] == 1.0
    assert g["unicorn"] == {"named": 5, "grounded_share": 0.0, "status": {"not_found": 5},
                            "examples": {"not_found": ["a1", "a2", "a3"]}}
    assert main(["stats", str(dataset)]) == 0
    assert "unicorn: 5, 0%, not_found 5" in capsys.readouterr().out


def test_validate_finds_a_reference_that_is_not_where_the_record_says(dataset, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    assert main(["identities", str(bad)]) == 0
    path = bad / C.IDENTITY_DIR / C.IDENTITY_FILE
    rows = pq.read_table(path).to_pylist()
    moved = next(r for r in rows if r["others"])
    moved["others"][0]["offset"] += 512
    pq.write_table(pa.Table.from_pylist(rows, schema=C.IDENTITY_SCHEMA), path)
    capsys.readouterr()
    assert main(["validate", str(bad)]) == 1
    assert f"clip {moved['clip_id']!r} subject {moved['subject']}: its reference" in capsys.readouterr().out
    path.write_bytes(b"not parquet")
    assert main(["validate", str(bad)]) == 1
    assert "not a subject identity record of this contract" in capsys.readouterr().out


def test_a_crop_count_that_does_not_match_the_subjects_is_refused(tmp_path):
    row = subject_clip("c1", "/v/c.mp4", [("dog", 1, 1)])
    with pytest.raises(ValueError, match="c1: 1 crops for 2 subject members"):
        list(ShardSink(str(tmp_path), Storage(), ShardsConfig())([row.replace(pngs=row.pngs[:1])]))

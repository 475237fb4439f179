"""Near-duplicate removal: the dedup job on Ray over a written dataset (groups, the kept clip, resume, new sources),
and everything that honours its record (trainer stream and fit, stats, validate, card, page)."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import contract as C
from common.storage import Storage
from curation.__main__ import main as curation_main
from curation.config import load_dedup_job
from curation.dedup import job as job_module
from curation.dedup import signals as S
from curation.dedup.job import dedup
from curation.tools.inspection import dataset_stats, validate
from training.data.fit import dataset_fit
from training.data.stream import ShardStream

from .data_fixtures import Clip, data_preset, write_dataset

RNG = np.random.default_rng(7)
BASE = [int(h) for h in RNG.integers(0, 2**63, size=(12, S.FRAMES), dtype=np.int64).ravel()]


def hashes(k: int) -> list[int]:
    return BASE[k * S.FRAMES : (k + 1) * S.FRAMES]


def flipped(values: list[int], bits: int, seed: int) -> list[int]:
    """``values`` with ``bits`` random bits flipped in each hash."""
    rng = np.random.default_rng(seed)
    return [v ^ sum(1 << int(b) for b in rng.choice(S.BITS, bits, replace=False)) for v in values]


def embedding(k: int, noise: float = 0.0, seed: int = 0) -> str:
    v = np.random.default_rng(100 + k).normal(size=32) + noise * np.random.default_rng(seed).normal(size=32)
    return S.encode_embedding(v / np.linalg.norm(v))


def clip(clip_id: str, fp: list[int], emb: str | None = None, aesthetic: float | None = None, frames: int = 5,
         width: int = 32) -> Clip:
    return Clip(clip_id, width, 32, num_frames=frames,
                extra={"fingerprint": S.fingerprint(fp), "embedding": emb, "aesthetic": aesthetic})


# Groups by construction: a (a copy, its mirror image, one with a few bits flipped), b (the longer is kept),
# c (only the embeddings are alike), d (the larger frame is kept); the rest are unique.
CLIPS = [
    clip("a1", hashes(0), embedding(0), aesthetic=5.0),
    clip("a2", [h ^ S.MIRROR for h in hashes(0)], embedding(0, 0.05, 1), aesthetic=6.0),
    clip("a3", flipped(hashes(0), 4, 2), embedding(0, 0.05, 2), aesthetic=4.0),
    clip("b1", hashes(1), frames=5),
    clip("b2", flipped(hashes(1), 3, 3), frames=7),
    clip("c1", hashes(2), embedding(2), aesthetic=3.0),
    clip("c2", hashes(3), embedding(2, 0.02, 4), aesthetic=2.0),
    clip("d1", hashes(4), width=32),
    clip("d2", flipped(hashes(4), 2, 5), width=48),
    *(clip(f"u{k}", hashes(k), embedding(k)) for k in range(5, 12)),
]
GROUPS = {"a2": {"a1", "a2", "a3"}, "b2": {"b1", "b2"}, "c1": {"c1", "c2"}, "d2": {"d1", "d2"}}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup") / "ds"
    write_dataset(root, CLIPS, clips_per_shard=5)
    return root


def run_dedup(root, *overrides):
    # clusters of about 4 clips: k-means and probes at work, not one cluster holding everything
    return dedup(load_dedup_job(None, str(root), ["dedup.cluster_size=4", "dedup.probes=2", *overrides]))


def record(root) -> list[dict]:
    return C.read_dedup(Storage(), str(root)).to_pylist()


def groups_of(rows: list[dict]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        if r["group"] is not None:
            out.setdefault(r["group"], set()).add(r["clip_id"])
    return out


@pytest.fixture(scope="module")
def deduped(tmp_path_factory, written, ray_local):
    root = tmp_path_factory.mktemp("dedup1") / "ds"
    shutil.copytree(written, root)
    result = run_dedup(root)
    return root, result


def test_near_duplicates_are_grouped_and_the_best_clip_kept(deduped):
    root, result = deduped
    rows = record(root)
    assert groups_of(rows) == GROUPS
    assert {r["clip_id"] for r in rows} == {c.clip_id for c in CLIPS}
    removed = {r["clip_id"] for r in rows if not r["kept"]}
    assert removed == set().union(*GROUPS.values()) - set(GROUPS)
    assert (result.clips, result.groups, result.removed) == (len(CLIPS), 4, 5)
    by_id = {r["clip_id"]: r for r in rows}
    # the mirror image matches exactly; the nearest of a unique clip is far below the threshold
    assert by_id["a1"]["fingerprint_similarity"] == pytest.approx(1.0)
    assert by_id["a1"]["fingerprint_nearest"] == "a2"
    assert by_id["u5"]["fingerprint_similarity"] < 0.7
    assert by_id["c2"]["embedding_nearest"] == "c1" and by_id["c2"]["embedding_similarity"] > 0.95
    assert by_id["b1"]["embedding_similarity"] is None  # no embedding
    assert result.per_signal["fingerprint"]["clusters"] > 1


def test_a_signal_turned_off_finds_only_the_other_signals_groups(written, tmp_path, ray_local):
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    run_dedup(root, "dedup.embedding_similarity=null")
    assert groups_of(record(root)) == {k: v for k, v in GROUPS.items() if k != "c1"}


def test_killed_run_resumes_to_the_same_record_and_new_sources_update_it(deduped, written, tmp_path, ray_local,
                                                                         monkeypatch):
    root = tmp_path / "ds"
    shutil.copytree(written, root)
    real = Storage.write_atomic
    calls = []

    def dies_after_one_task(self, uri, *args, **kwargs):
        if "/work/" in uri:
            calls.append(uri)
            if len(calls) == 2:
                raise OSError(5, "Input/output error", uri)
        return real(self, uri, *args, **kwargs)

    monkeypatch.setattr(Storage, "write_atomic", dies_after_one_task)
    with pytest.raises(OSError):
        run_dedup(root)
    monkeypatch.setattr(Storage, "write_atomic", real)
    assert C.read_dedup(Storage(), str(root)) is None  # nothing recorded by the killed run
    again = run_dedup(root)
    assert again.per_signal["fingerprint"]["tasks_run"] == again.per_signal["fingerprint"]["tasks"] - 1
    assert record(root) == record(deduped[0])
    assert not Storage().list(str(root / C.DEDUP_DIR / job_module.WORK_DIR))  # work files gone once recorded
    # a new source with a copy of u5 and a clip of its own: the groups cover it
    write_dataset(root, [clip("new-u5", flipped(hashes(5), 1, 9), aesthetic=9.0), clip("new-x", flipped(hashes(0), 40, 8))],
                  clips_per_shard=5)
    run_dedup(root)
    assert groups_of(record(root)) == {**GROUPS, "new-u5": {"new-u5", "u5"}}


def test_training_leaves_removed_clips_out_unless_told_to_keep_them(deduped):
    root, _ = deduped
    removed = C.removed_clips(Storage(), str(root))
    cfg = data_preset("tiny", urls=[str(root)], frames=[3], shuffle_buffer=1)
    shards = C.committed_shards(Storage(), str(root))
    stream = ShardStream(cfg, shards, 0, 1)
    keys = []
    for raw in stream.raw_samples():
        if stream.epoch:
            break
        keys.append(raw.key)
    assert sorted(keys) == sorted(c.clip_id for c in CLIPS if c.clip_id not in removed)
    assert stream.counters["samples_near_duplicate"] == len(removed) == 5
    # precompute reads shards whole through the same stream
    assert not removed & {raw.key for s in range(len(shards)) for raw in ShardStream(cfg, shards, 0, 1).shard_samples(s)}
    fit = dataset_fit(cfg, media=True, holdout=0.0, max_validation=0)
    assert (fit.near_duplicates, fit.trainable) == (5, len(CLIPS) - 5)
    keep = data_preset("tiny", urls=[str(root)], frames=[3], near_duplicates="keep")
    assert ShardStream(keep, shards, 0, 1).removed == frozenset()
    assert dataset_fit(keep, media=True, holdout=0.0, max_validation=0).trainable == len(CLIPS)


def test_stats_card_and_page_show_the_record_and_validate_checks_it(deduped, tmp_path, capsys):
    root, result = deduped
    nd = dataset_stats(str(root), Storage())["near_duplicates"]
    assert (nd["removed"], nd["groups"], nd["clips_kept"], nd["not_in_record"]) == (5, 4, len(CLIPS) - 5, 0)
    assert "5 of the clips are near duplicates" in (root / "README.md").read_text()
    page = (root / C.DEDUP_DIR / "report.html").read_text()
    assert page.count("<br><b>kept</b>") == 4 and page.count("<br>removed ") == 5
    assert validate(str(root), Storage()) == []
    broken = tmp_path / "ds"
    shutil.copytree(root, broken)
    table = C.read_dedup(Storage(), str(broken))
    extra = {n: [None] for n in table.column_names} | {"clip_id": ["not-a-clip"], "kept": [True]}
    pq.write_table(pa.concat_tables([table, pa.Table.from_pydict(extra, schema=C.DEDUP_SCHEMA)]),
                   broken / C.DEDUP_DIR / C.DEDUP_FILE)
    problems = validate(str(broken), Storage())
    assert len(problems) == 1 and "'not-a-clip' is not in the manifest" in problems[0]
    (broken / C.DEDUP_DIR / C.DEDUP_FILE).write_bytes(b"not parquet")
    assert "not a near-duplicate record" in validate(str(broken), Storage())[0]
    assert curation_main(["dedup", str(broken), "--set", "dedup.probes=0"]) == 2
    assert "dedup: need cluster_size >= 2 and probes >= 1" in capsys.readouterr().err

"""data.subject_references: the crop each subject is conditioned on (its keyframe crop, a reference from other frames
of its clip, or a crop from another clip of the identity record), the fallback from one to the next, the draw per
(seed, epoch, clip, subject), bounded reads of the record's crops, and kill-and-resume on 2 ranks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from common import contract as C
from common.storage import Storage
from training.config import JobError
from training.data import list_shards
from training.data.decode import decode_subject
from training.data.stream import ShardStream

from .data_fixtures import Clip, clip_row, data_preset, write_dataset
from .test_trainer import ROOT, jobs_cmd, kill_when_checkpointed, metrics, samples, train_args

MODES = ("same_clip", "other_frames", "other_clip")
HUGE = 10**12  # bytes a hostile record may claim a crop has

# Each clip's crops have a colour of their own, and each crop of a clip a shape of its own.
CLIPS = [
    Clip("a", 32, 32, num_frames=3, num_subjects=2, references=(2, 0), colour=(200, 30, 30)),
    Clip("b", 48, 32, num_frames=3, num_subjects=1, references=(1,), colour=(30, 200, 30)),
    Clip("c", 32, 32, num_frames=3, num_subjects=2, colour=(30, 30, 200)),
    Clip("d", 48, 32, num_frames=3, num_subjects=1, references=(3,), colour=(200, 200, 30)),
    Clip("e", 32, 32, num_frames=3, num_subjects=0),
    Clip("f", 48, 32, num_frames=3, num_subjects=1, colour=(200, 30, 200)),
]
# (clip, subject) -> its crops in other clips: (clip, member[, fields that replace the record's]).
LINKS = {
    ("a", 0): [("b", "subject_0_ref0.png"), ("c", "subject_1.png")],
    ("b", 0): [("a", "subject_0_ref1.png")],
    ("c", 0): [("a", "subject_0.png", {"shard": "part-gone"})],  # a shard that is not there
    ("c", 1): [("d", "subject_0_ref2.png")],
    ("d", 0): [("b", "subject_0.png", {"size": HUGE})],  # a size no reader may allocate
}


def write_identities(root: Path, links: dict) -> None:
    """The identity record of ``root``: each crop located by the manifest's member_offsets, as the identities job
    locates it."""
    rows = C.read_manifest(Storage(), str(root), ["clip_id", "shard", "member_offsets"]).to_pylist()
    where = {(r["clip_id"], o["member"]): {"shard": r["shard"], "offset": o["offset"], "size": o["size"]}
             for r in rows for o in r["member_offsets"]}
    record = [{"clip_id": clip, "subject": k, "identity": f"{clip}/{k}", "others": [
        {"clip_id": other, "subject": int(member.split("_")[1].split(".")[0]), "member": member,
         **where[(other, member)], **(changes[0] if changes else {}), "similarity": 0.9}
        for other, member, *changes in crops]} for (clip, k), crops in links.items()]
    (root / C.IDENTITY_DIR).mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(record, schema=C.IDENTITY_SCHEMA), root / C.IDENTITY_DIR / C.IDENTITY_FILE)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refs") / "ds"
    write_dataset(root, CLIPS, clips_per_shard=2)
    write_identities(root, LINKS)
    return root


def config(root: Path, mode: str, **changes):
    values = dict(frames=[3], shuffle_buffer=1, batch_size=1, subject_references=mode)
    return data_preset("tiny", urls=[str(root)], **{**values, **changes})


CROPS = {(c.clip_id, name): png for c in CLIPS for name, png in zip(C.png_members(clip_row(c).meta), clip_row(c).pngs)}


def crops_of(sample) -> list[tuple[str, str]]:
    """The (clip, member) whose crop each of the sample's subjects is, framed at its bucket."""
    height, width = sample.subjects.shape[-2:]
    framed = {name: decode_subject(png, height, width) for name, png in CROPS.items()}
    out = []
    for subject in sample.subjects:
        found = [name for name, crop in framed.items() if torch.equal(crop, subject)]
        assert len(found) == 1, found  # every crop of the dataset frames differently
        out.append(found[0])
    return out


def decoded(root: Path, mode: str, epoch: int = 0, **changes) -> dict:
    """Clip id -> its sample decoded for ``epoch`` by a fresh stream."""
    stream = ShardStream(config(root, mode, **changes), list_shards(config(root, mode)), 0, 1)
    return {raw.key: stream.decode(raw, epoch) for s in range(len(stream.shards)) for raw in stream.shard_samples(s)}


def test_each_mode_conditions_on_its_crop_and_falls_back_to_the_next(dataset):
    same = decoded(dataset, "same_clip")
    for c in CLIPS:  # today's crops, byte for byte
        assert crops_of(same[c.clip_id]) == [(c.clip_id, C.subject_member(k)) for k in range(c.num_subjects)]
        assert dict(same[c.clip_id].references) == ({"references_same_clip": c.num_subjects} if c.num_subjects else {})

    frames = decoded(dataset, "other_frames")
    assert crops_of(frames["a"])[0] in {("a", "subject_0_ref0.png"), ("a", "subject_0_ref1.png")}
    assert crops_of(frames["a"])[1] == ("a", "subject_1.png")  # no reference of its own: its keyframe crop
    assert crops_of(frames["b"]) == [("b", "subject_0_ref0.png")]
    assert crops_of(frames["c"]) == [("c", "subject_0.png"), ("c", "subject_1.png")]
    assert dict(frames["a"].references) == {"references_other_frames": 1, "references_same_clip": 1}

    other = decoded(dataset, "other_clip")
    assert crops_of(other["a"])[0] in {("b", "subject_0_ref0.png"), ("c", "subject_1.png")}
    assert crops_of(other["a"])[1] == ("a", "subject_1.png")  # not in the record, no reference: keyframe crop
    assert crops_of(other["b"]) == [("a", "subject_0_ref1.png")]
    # c0's crop is in a shard that is gone: counted, then its own references (none: its keyframe crop).
    assert crops_of(other["c"]) == [("c", "subject_0.png"), ("d", "subject_0_ref2.png")]
    assert dict(other["c"].references) == {"references_unreadable": 1, "references_same_clip": 1,
                                           "references_other_clip": 1}
    # d0's crop claims a terabyte: refused, then one of its references from other frames.
    assert crops_of(other["d"])[0][0] == "d" and crops_of(other["d"])[0][1].startswith("subject_0_ref")
    assert dict(other["d"].references) == {"references_unreadable": 1, "references_other_frames": 1}
    assert crops_of(other["f"]) == [("f", "subject_0.png")]


def test_the_draw_depends_on_seed_epoch_clip_and_subject_only(dataset):
    for mode in ("other_frames", "other_clip"):
        assert {k: crops_of(s) for k, s in decoded(dataset, mode, 3).items()} == \
            {k: crops_of(s) for k, s in decoded(dataset, mode, 3).items()}
    epochs = [decoded(dataset, "other_clip", epoch) for epoch in range(8)]
    assert {crops_of(e["a"])[0] for e in epochs} == {("b", "subject_0_ref0.png"), ("c", "subject_1.png")}
    assert len({crops_of(e["d"])[0] for e in epochs}) > 1  # d0's references from other frames, after the refusal
    seeds = [decoded(dataset, "other_frames", 0, seed=seed)["d"] for seed in range(8)]
    assert len({crops_of(s)[0] for s in seeds}) > 1


def test_a_record_never_decides_what_a_reader_reads(dataset, tmp_path):
    stream = ShardStream(config(dataset, "other_clip"), list_shards(config(dataset, "other_clip")), 0, 1)
    opened = []
    open_file = stream.others.storage.open
    stream.others.storage.open = lambda uri, *a: opened.append(uri) or open_file(uri, *a)
    d = next(raw for s in range(len(stream.shards)) for raw in stream.shard_samples(s) if raw.key == "d")
    assert dict(stream.decode(d).references) == {"references_unreadable": 1, "references_other_frames": 1}
    assert opened == []  # refused from the record alone: nothing read, nothing allocated
    (root, good), = stream.others.candidates("b", 0)
    assert stream.others.read(root, good) == CROPS[("a", "subject_0_ref1.png")]
    end = (dataset / C.SHARDS_DIR / f"{good['shard']}.tar").stat().st_size
    for bad, why in [({"size": HUGE}, "data.max_member_mb"), ({"size": 0}, "not within"),
                     ({"offset": -1}, "not within"), ({"shard": "../shards/x"}, "not a shard name"),
                     ({"offset": end - 10}, "the identity record says")]:
        with pytest.raises(ValueError, match=why):
            stream.others.read(root, {**good, **bad})
    assert "../shards/x" not in " ".join(opened)
    # A record of another contract stops the run with one message; no record is no crop from another clip.
    broken = tmp_path / "broken"
    write_dataset(broken, CLIPS[:1], clips_per_shard=1)
    (broken / C.IDENTITY_DIR).mkdir()
    (broken / C.IDENTITY_DIR / C.IDENTITY_FILE).write_bytes(b"not parquet")
    with pytest.raises(JobError, match=r"subjects\.parquet: not a .*record"):
        ShardStream(config(broken, "other_clip"), list_shards(config(broken, "other_clip")), 0, 1)
    (broken / C.IDENTITY_DIR / C.IDENTITY_FILE).unlink()
    assert crops_of(decoded(broken, "other_clip")["a"])[0][1].startswith("subject_0_ref")


@pytest.mark.parametrize("mode", MODES)
def test_a_restored_stream_yields_the_same_batches(dataset, mode):
    """Restored after each batch of six epochs (batches of 2 in two buckets, so part-filled buckets and the
    shuffle buffer hold samples of an earlier epoch than the cursor's): the same next batches, subjects and
    counters."""
    cfg = config(dataset, mode, batch_size=2, shuffle_buffer=4)
    shards = list_shards(cfg)
    stream = ShardStream(cfg, shards, 0, 1)
    batches, states = [], []
    for batch in iter(stream):
        batches.append(batch)
        states.append(json.loads(json.dumps(stream.state_dict())))
        if stream.epoch == 6:
            break
    assert any(epoch < s["epoch"] for s in states for epoch in s["held_epochs"][len(s["buffer"]):])
    for i, state in enumerate(states[:-1]):
        resumed = ShardStream(cfg, shards, 0, 1)
        resumed.load_state_dict(state)
        for want, got in zip(batches[i + 1:i + 5], resumed):
            assert got["key"] == want["key"] and torch.equal(got["subjects"], want["subjects"]), (i, want["key"])
            assert got["counters"] == want["counters"]
    totals = batches[-1]["counters"]
    used = {m: totals[f"references_{m}"] for m in MODES}
    assert used[mode] > 0 and sum(used.values()) == sum(int(b["num_subjects"].sum()) for b in batches)


def test_features_drawn_for_another_mode_are_refused(dataset):
    from cinema_model.config import preset
    from training.data.features import check_meta, made_with

    model = preset("full")
    made = {"made_with": made_with(model, config(dataset, "same_clip"))}
    check_meta(made, made_with(model, config(dataset, "same_clip")), str(dataset))
    with pytest.raises(JobError, match=r'subject_references: "same_clip" \(features\) != "other_clip" \(this job\)'):
        check_meta(made, made_with(model, config(dataset, "other_clip")), str(dataset))


# The trainer's run: c0..c7 (32x32, 9 frames), each kind of subject: crops in other clips (c1's one unreadable),
# references from other frames only, and neither.
TRAIN_CLIPS = [Clip(f"c{i}", 32, 32, num_frames=9, num_subjects=n, references=refs, caption=f"a ball number {i}",
                    colour=(30 * i, 250 - 30 * i, 120))
               for i, (n, refs) in enumerate([(2, (2, 0)), (1, (1,)), (2, ()), (0, ()), (1, (3,)), (2, (0, 1)),
                                               (1, ()), (2, (1, 1))])]
TRAIN_LINKS = {("c0", 0): [("c2", "subject_1.png"), ("c7", "subject_0_ref0.png")],
               ("c1", 0): [("c4", "subject_0.png", {"size": HUGE})],
               ("c2", 1): [("c0", "subject_0_ref1.png")], ("c6", 0): [("c5", "subject_1_ref0.png")],
               ("c7", 1): [("c4", "subject_0_ref2.png"), ("c0", "subject_0.png")]}


@pytest.mark.slow
def test_two_ranks_killed_and_resumed_train_on_the_same_references(tmp_path):
    """data.subject_references=other_clip over subjects of each kind, killed after the checkpoint of step 2 and rerun
    to step 6: the losses, samples and reference counts of an uninterrupted run. (The same_clip and other_frames
    paths run here as other_clip's fallbacks; their own modes' restore is the stream test above.)"""
    root = tmp_path / "ds"
    write_dataset(root, TRAIN_CLIPS, clips_per_shard=2)
    write_identities(root, TRAIN_LINKS)
    base = ["steps=6", "checkpoint.every=2", "data.batch_size=1", f"data.urls=[{root}]", "optim.lr=1e-3",
            "data.subject_references=other_clip"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    code, last = kill_when_checkpointed(jobs_cmd([train_args(reference, *base), train_args(resumed, *base)]),
                                        resumed, "every process", tmp_path / "launch.log")
    assert code != 0 and last < 6
    subprocess.run(jobs_cmd([train_args(resumed, *base)]), cwd=ROOT, check=True, capture_output=True, timeout=600)

    ref, res = metrics(reference), metrics(resumed)
    assert sorted(res) == list(range(last + 1, 7))
    assert all(res[s] == pytest.approx(ref[s], rel=1e-5) for s in res), (ref, res)
    for rank in (0, 1):
        assert samples(resumed, rank) == samples(reference, rank)
    used = [[json.loads(r) for r in (out / "data.jsonl").read_text().splitlines()][-1] for out in (reference, resumed)]
    counts = {k: v for k, v in used[0].items() if k.startswith("references_")}
    assert counts == {k: v for k, v in used[1].items() if k.startswith("references_")}
    assert all(counts.values()), counts  # every path taken: other clip, unreadable, other frames, same clip

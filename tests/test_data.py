"""The streaming loader on small real shards written by curation's DatasetWriter."""

import io
import itertools
import json
import logging
import pickle
import shutil
import tarfile
from types import SimpleNamespace

import boto3
import pytest
import torch

from common import contract as C
from common.shard_reader import iter_samples
from common.storage import Storage
from training.config import ConfigError, DataConfig
from training.data import ShardLoader, list_shards
from training.data import stream as stream_module
from training.data.decode import decode_clip, nearest_bucket
from training.data.stream import ShardStream

from .data_fixtures import Clip, clip_row, data_preset, frame_level, standard_clips, tiny_clip, write_dataset

CLIPS = standard_clips()
GOOD = {c.clip_id: c for c in CLIPS if c.num_frames >= 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "ds"
    write_dataset(root, CLIPS, clips_per_shard=4)
    return root


def config(urls, **changes) -> DataConfig:
    values = dict(frames=[3], shuffle_buffer=1, batch_size=1, retry_backoff_s=0.0)
    return data_preset("tiny", urls=[str(u) for u in urls], **{**values, **changes})


def in_write_order(shards: list[str]) -> list[str]:
    """Local shards ordered by their first clip id (shard names come from their clips, not from when they were written)."""
    def first(shard):
        with tarfile.open(shard) as tar:
            return min(tar.getnames())
    return sorted(shards, key=first)


def take(loader, n):
    return list(itertools.islice(loader, n))


def epoch_keys(stream: ShardStream, epoch: int) -> list[str]:
    """Keys of the samples the stream's slot reads in ``epoch``, in order."""
    keys = []
    for raw in stream.raw_samples():
        if stream.epoch > epoch:
            return keys
        if stream.epoch == epoch:
            keys.append(raw.key)


def as_worker(monkeypatch, worker: int, workers: int):
    monkeypatch.setattr(stream_module, "get_worker_info", lambda: SimpleNamespace(id=worker, num_workers=workers))


def test_samples_round_trip(dataset):
    batches = take(ShardLoader(config([dataset])), len(GOOD))
    assert sorted(k for b in batches for k in b["key"]) == sorted(GOOD)
    for b in batches:
        clip = GOOD[b["key"][0]]
        assert b["caption"] == [clip.caption] and b["meta"][0]["clip_id"] == clip.clip_id
        assert b["meta"][0]["width"] == clip.width and len(b["meta"][0]["subjects"]) == clip.num_subjects
        assert b["num_subjects"].tolist() == [clip.num_subjects]
        assert b["subject_mask"].tolist() == [[k < clip.num_subjects for k in range(6)]]
        subjects, (height, width) = b["subjects"][0], b["video"].shape[-2:]
        assert subjects.shape == (6, 3, height, width) and subjects.dtype == torch.uint8  # framed at the bucket size
        assert not subjects[clip.num_subjects:].any()  # padding
        for k in range(clip.num_subjects):  # an opaque red disc on white
            assert subjects[k, :, 0, 0].tolist() == [255, 255, 255]
            assert subjects[k, 0, height // 2, width // 2] > 204 and subjects[k, 1, height // 2, width // 2] < 26
        video = b["video"][0]
        assert video.dtype == torch.uint8 and video.shape[:2] == (3, 3)
        levels = video[:, :, :, -1].float().mean(dim=(1, 2))  # right edge: the grey part
        assert torch.allclose(levels, torch.tensor([float(frame_level(i)) for i in range(3)]), atol=4)


def test_clips_go_to_the_nearest_aspect_ratio_bucket_and_batches_stack(dataset):
    buckets = [(480, 720), (720, 480), (480, 480)]
    sizes = [(1920, 1080), (544, 1280), (1000, 1000), (700, 640)]
    assert [nearest_bucket(w, h, buckets) for w, h in sizes] == [0, 1, 2, 2]
    loader = ShardLoader(config([dataset], batch_size=2, shuffle_buffer=4))
    for b in take(loader, 12):
        height, width = b["video"].shape[-2:]
        assert {(m["width"] * height == m["height"] * width) for m in b["meta"]} == {True}


def test_clip_is_centre_cropped_and_sampled_at_the_target_fps():
    cfg = config(["unused"], target_fps=4.0)  # 8 fps clip: every 2nd frame
    bucket, video = decode_clip(tiny_clip(96, 32, num_frames=7), cfg)  # 3:1 -> the 32x48 bucket
    assert bucket == 0 and video.shape == (3, 3, 32, 48) and video.dtype == torch.uint8
    white = (video[0, 0] > 240).all(dim=0)  # columns of the white left third that survive the crop
    assert white.sum() == 8 and white[:8].all()  # centre crop of 48 of 96 columns; a squeeze would keep 16
    levels = video[:, :, :, -1].float().mean(dim=(1, 2))
    assert torch.allclose(levels, torch.tensor([float(frame_level(i)) for i in (0, 2, 4)]), atol=4)


@pytest.mark.parametrize("num_shards,world_size,workers", [(3, 2, 2), (3, 1, 2), (1, 2, 2)])
def test_shards_split_over_ranks_and_workers_cover_every_sample_once_per_epoch(dataset, monkeypatch, num_shards,
                                                                               world_size, workers):
    shards = in_write_order(list_shards(config([dataset])))[:num_shards]
    with tarfile.open(shards[0]) as tar:
        first_shard = {m.name.split(".")[0] for m in tar.getmembers()}
    expected = sorted(GOOD) + ["short"] if num_shards == 3 else sorted(first_shard)
    for epoch in (0, 1):
        per_slot = []
        for rank, worker in itertools.product(range(world_size), range(workers)):
            as_worker(monkeypatch, worker, workers)
            per_slot.append(epoch_keys(ShardStream(config(shards), shards, rank, world_size), epoch))
        assert all(per_slot), "a slot without data would hang its rank"
        assert sorted(k for keys in per_slot for k in keys) == sorted(expected)


@pytest.mark.timeout(60)
def test_one_shard_feeds_every_worker_of_every_rank(dataset):
    shard = in_write_order(list_shards(config([dataset])))[:1]
    seen = []
    for rank in range(2):
        loader = ShardLoader(config(shard, num_workers=2), rank, world_size=2)
        seen.append({k for b in take(loader, 4) for k in b["key"]})
    # Four slots share the shard's four samples: each worker of each rank has its own one.
    assert [len(s) for s in seen] == [2, 2] and not seen[0] & seen[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_exact_sample_stream(dataset, workers):
    cfg = config([dataset], batch_size=2, shuffle_buffer=4, num_workers=workers)
    loader = ShardLoader(cfg)
    stream = iter(loader)
    for _ in range(3):
        next(stream)
    saved = json.dumps(loader.state_dict())  # plain data: no tensors, no pickles
    assert len(saved) < 64_000
    expected = [next(stream) for _ in range(5)]
    counters = loader.counters()

    resumed = ShardLoader(cfg)
    resumed.load_state_dict([json.loads(saved)])
    got = take(resumed, 5)
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    for a, b in zip(got, expected):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["subjects"], b["subjects"])
        assert a["caption"] == b["caption"] and torch.equal(a["subject_mask"], b["subject_mask"])
    assert resumed.counters() == counters
    fresh = [b["key"] for b in take(ShardLoader(cfg), 5)]
    assert fresh != [b["key"] for b in got], "the resumed loader started over"


@pytest.mark.parametrize("old,new", [(2, 1), (1, 2), (4, 3), (9, 2)])
def test_a_changed_slot_count_reads_no_sample_twice_in_an_epoch(tmp_path, monkeypatch, old, new):
    """Slots (ranks x workers) stopped at different places, some already in the next epoch, hand over to another
    number of slots: in each epoch the old and the new reads together take every sample exactly once, and the
    samples the old slots held unbatched are dealt to the new ones."""
    write_dataset(tmp_path / "ds", [Clip(f"c{i:02d}", 32, 32, num_frames=3) for i in range(20)], clips_per_shard=3)
    cfg = config([tmp_path / "ds"], shuffle_buffer=3)
    shards = list_shards(cfg)
    reads = []
    raw_samples = ShardStream.raw_samples

    def recorded(self):
        for raw in raw_samples(self):
            reads.append((self.epoch, raw.key))
            yield raw

    monkeypatch.setattr(ShardStream, "raw_samples", recorded)
    before = [ShardStream(cfg, shards, rank, old) for rank in range(old)]
    for rank, stream in enumerate(before):
        take(iter(stream), 2 + 3 * rank)
    states = json.loads(json.dumps([s.state_dict() for s in before]))
    first = min(s["epoch"] for s in states)
    held = sorted(p for s in states for p in [*s["buffer"], *(q for bucket in s["pending"] for q in bucket)])
    after = [ShardStream(cfg, shards, rank, new, handover=states) for rank in range(new)]
    streams = [iter(s) for s in after]
    assert sorted(r.position for s in after for r in (s._take_over() or s.buffer)) == held
    for stream in streams:
        take(stream, 60)
    for epoch in (first, first + 1):
        keys = [k for e, k in reads if e == epoch]
        assert sorted(keys) == [f"c{i:02d}" for i in range(20)], epoch


def test_a_changed_world_resumes_through_the_loader_and_a_changed_dataset_is_refused(dataset, tmp_path):
    old = [ShardLoader(config([dataset]), rank, world_size=2) for rank in range(2)]
    seen = {k for loader in old for b in take(loader, 3) for k in b["key"]}
    states = json.loads(json.dumps([loader.state_dict() for loader in old]))
    resumed = ShardLoader(config([dataset]), 0, world_size=1)
    resumed.load_state_dict(states)
    rest = [k for b in take(resumed, len(GOOD) - len(seen)) for k in b["key"]]
    assert sorted([*seen, *rest]) == sorted(GOOD)  # the epoch goes on: nothing twice, nothing lost
    assert resumed.counters()["samples_yielded"] == len(GOOD)  # the old counts carried over
    other = tmp_path / "other"
    write_dataset(other, CLIPS[:4], clips_per_shard=4)
    with pytest.raises(ValueError, match="exclude_from_loading=\\[data\\]"):
        ShardLoader(config([other]), 0, world_size=1).load_state_dict(states)


def test_captions_only_stream_decodes_nothing_and_keeps_short_clips(dataset, monkeypatch):
    from training.data import decode

    monkeypatch.setattr(decode, "decode_clip", lambda *a: pytest.fail("a clip was decoded"))
    monkeypatch.setattr(decode, "frame_subject", lambda *a: pytest.fail("a subject was decoded"))
    opened = []
    monkeypatch.setattr(stream_module, "iter_samples", lambda *a, **k: opened.append(a[-1]) or iter_samples(*a, **k))
    batches = take(ShardLoader(config([dataset]), media=False), len(CLIPS))
    assert sorted(k for b in batches for k in b["key"]) == sorted(c.clip_id for c in CLIPS)  # "short" too
    assert all(set(b) == {"key", "caption", "meta"} for b in batches)
    assert {b["caption"][0] for b in batches} == {c.caption for c in CLIPS}
    wanted = opened[0]
    assert wanted("caption.txt") and wanted("json") and not wanted("mp4") and not wanted("subject_0.png")


def test_corrupt_samples_and_damaged_shards_are_skipped_and_counted(tmp_path, caplog):
    clips = [Clip(f"c{i}", 48, 32, caption=str(i)) for i in range(9)]
    clips[1].mp4 = b"not a video" * 50
    write_dataset(tmp_path / "ds", clips, clips_per_shard=3)  # shards: c0-c2, c3-c5, c6-c8
    shards = in_write_order(list_shards(config([tmp_path / "ds"])))
    with tarfile.open(shards[1]) as tar:  # cut shard 1 in the middle of c5's mp4
        mp4 = tar.getmember("c5.mp4")
    with open(shards[1], "r+b") as f:
        f.truncate(mp4.offset_data + mp4.size // 2)
    with tarfile.open(shards[2]) as tar:  # garble the header of c8's first member
        header = tar.getmember("c8.mp4").offset
    with open(shards[2], "r+b") as f:
        f.seek(header)
        f.write(b"\xff" * 512)
    # Delivered: whole samples before the damage, less c7 (whether it was complete is unknown at a bad header).
    expected = ["c0", "c2", "c3", "c4", "c6"]
    with caplog.at_level(logging.WARNING, logger="training.data"):
        loader = ShardLoader(config([tmp_path / "ds"]))
        batches = take(loader, len(expected))
    assert sorted(b["key"][0] for b in batches) == expected
    counters = loader.counters()
    assert counters["samples_corrupt"] == 1 and counters["shards_corrupt"] == 2
    assert f"{shards[0]} [c1]: undecodable sample" in caplog.text
    assert f"{shards[1]}: corrupt or truncated shard" in caplog.text


def test_streams_from_s3_and_a_presigned_http_url(dataset, s3_server):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="train")
    for path in dataset.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "train", f"ds/{path.relative_to(dataset)}")
    cfg = config(["s3://train/ds"], storage={"endpoint_url": s3_server}, num_workers=2)
    local = in_write_order(list_shards(config([dataset])))
    names = [s.rsplit("/", 1)[-1] for s in list_shards(config([dataset]))]
    assert list_shards(cfg) == [f"s3://train/ds/shards/{n}" for n in names]
    batches = take(ShardLoader(cfg), 24)  # each worker's first epoch (at most 8 samples) and more
    assert {k for b in batches for k in b["key"]} == set(GOOD)

    key = f"ds/shards/{local[0].rsplit('/', 1)[-1]}"  # clip-00 to clip-03
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "train", "Key": key}, ExpiresIn=600)
    assert list_shards(config([url])) == [url]
    stream = ShardStream(config([url]), [url], 0, 1)
    assert epoch_keys(stream, 0) == [f"clip-{i:02d}" for i in range(4)]


class FlakyFile(io.RawIOBase):
    """A file whose reads fail with a broken pipe once ``budget`` bytes have been read."""

    def __init__(self, path, budget):
        self.f, self.budget = open(path, "rb"), budget

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        return self.f.seek(pos, whence)

    def tell(self):
        return self.f.tell()

    def read(self, n=-1):
        data = self.f.read(n)
        self.budget -= len(data)
        if self.budget < 0:
            raise BrokenPipeError("broken pipe")
        return data

    def close(self):
        self.f.close()
        super().close()


def test_read_errors_reopen_mid_shard_then_skip_the_shard(dataset, monkeypatch):
    shards = in_write_order(list_shards(config([dataset])))
    good, bad = shards[0], shards[2]
    opens = {good: 0, bad: 0}
    real_open = Storage.open

    def flaky_open(storage, url, mode="rb"):
        if url not in opens:  # the dataset's dedup record, read when the stream is made
            return real_open(storage, url, mode)
        opens[url] += 1
        if url == bad:
            return FlakyFile(url, budget=0)  # never readable
        return FlakyFile(url, budget=8_000 if opens[url] == 1 else 10**9)  # breaks once, in the second sample

    monkeypatch.setattr(Storage, "open", flaky_open)
    stream = ShardStream(config([good]), [good], 0, 1)
    assert epoch_keys(stream, 0) == [f"clip-{i:02d}" for i in range(4)]  # reopened at clip-01: nothing twice
    assert stream.counters["read_retries"] == 1 and stream.counters["shards_failed"] == 0

    stream = ShardStream(config([good, bad], retries=2), [good, bad], 0, 1)
    assert epoch_keys(stream, 0) == [f"clip-{i:02d}" for i in range(4)]
    failed = stream.counters["shards_failed"]  # once in epoch 0; again if epoch 1 starts with it
    assert failed >= 1 and opens[bad] == 3 * failed and stream.counters["read_retries"] == 2 * failed


class Payload:
    """Unpickling this creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_hostile_members_are_neither_extracted_nor_unpickled(tmp_path, monkeypatch):
    shard_dir = tmp_path / "a" / "b"
    shard_dir.mkdir(parents=True)
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(Payload(marker))
    good = clip_row(Clip("ok", 48, 32, caption="fine"))
    members = [("../escape.mp4", good.mp4), ("a/nested.mp4", good.mp4), ("ok.mp4", good.mp4),
               ("ok.caption.txt", b"fine"), ("ok.pyd", evil), ("ok.pth", evil), ("evil.pth", evil)]
    shard = shard_dir / "hostile.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.mp4")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    before = sorted(tmp_path.rglob("*"))

    cfg = config([shard], frames=[2])
    stream = ShardStream(cfg, [str(shard)], 0, 1)
    raws = list(stream.shard_samples(0))
    assert [(r.key, sorted(r.members)) for r in raws] == [("ok", ["caption.txt", "mp4"]), ("evil", [])]
    assert stream.counters["members_rejected"] == 3  # ../escape.mp4, a/nested.mp4, the symlink (and its sample)
    batches = take(ShardLoader(cfg, shards=[str(shard)]), 2)
    assert [b["key"] for b in batches] == [["ok"], ["ok"]]  # "evil" has no video: skipped
    assert set(batches[0]) == {"key", "video", "subjects", "num_subjects", "subject_mask", "caption", "meta"}
    assert not marker.exists() and sorted(tmp_path.rglob("*")) == before


def test_only_committed_shards_are_listed(dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    committed = list_shards(config([root]))
    assert len(committed) == 3
    (root / C.SHARDS_DIR / f"{C.shard_name([('x.mp4', 'orphan')])}.tar").write_bytes(b"")  # its manifest part never landed
    assert list_shards(config([root])) == committed
    with pytest.raises(ValueError, match="cannot be listed"):
        list_shards(config(["https://example.com/ds"]))
    with pytest.raises(ValueError, match="no committed shards"):
        list_shards(config([tmp_path / "empty"]))


@pytest.mark.parametrize("override", ["urls=[]", "buckets=[]", "max_subjects=7", "shuffle_buffer=0", "target_fps=0"])
def test_invalid_data_config_is_refused(override):
    with pytest.raises(ConfigError):
        data_preset("tiny", [override], urls=["x"])

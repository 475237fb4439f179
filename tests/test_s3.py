"""Sources read from and dataset written to an S3-compatible server on loopback."""

import hashlib

import boto3
import s3fs

from common.storage import Storage, StorageConfig
from curation.config import load_job
from curation.run.runner import run

from .conftest import VIDEOS
from .pipeline_helpers import check_contract, run_cpu_stages
from .test_source_file import atoms


def test_curation_from_and_to_object_storage(ray_local, s3_server, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="data")
    for name in ("counter.mp4", "fades.mp4"):
        s3.upload_file(str(VIDEOS / name), "raw", f"videos/{name}")
    s3.put_object(Bucket="raw", Key="videos/broken.mp4", Body=b"\x00" * 1000)
    cfg = load_job(None, [f"storage.endpoint_url={s3_server}", "scenes.min_clip_s=0.5", "ray.num_cpus=2",
                          "filters.max_text_area=null",
                          "caption.enabled=false", "aesthetic.enabled=false",
                          "scenes.detectors=[{kind: adaptive}]"],  # storage is under test, not the detectors
                   input="s3://raw/videos/", output="s3://data/curated")
    result = run(cfg)
    assert result.sources_total == 3 and result.stats.sources_failed == 1
    storage = Storage(StorageConfig(endpoint_url=s3_server))
    rows = check_contract("s3://data/curated", storage)
    assert {r["source_uri"] for r in rows.values()} == {"s3://raw/videos/counter.mp4"}  # fades.mp4: no content
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="curated/")["Contents"]]
    assert any(k.startswith("curated/shards/part-") and k.endswith(".tar") for k in keys)
    assert not any(k.endswith(".tmp") for k in keys), "temporary objects left behind"
    assert sum(k.startswith("curated/done/") for k in keys) == 3
    sizes = sum((VIDEOS / name).stat().st_size for name in ("counter.mp4", "fades.mp4"))
    assert result.stats.source_bytes == result.stats.source_bytes_read == sizes  # each byte read once


def test_the_scene_pass_pulls_each_source_byte_from_the_bucket_once(s3_server, monkeypatch):
    # What the bucket sent, under s3fs's read-ahead: before, the probe, the SHA-1 and the pass each pulled the whole
    # file (3x), and a read-ahead thrown away at each jump to an index at the end pulled more. Read-ahead blocks of
    # 256 KB instead of 50 MB make this 2.4 MB video behave as a large one does.
    monkeypatch.setattr(s3fs.S3FileSystem, "default_block_size", 1 << 18)
    sent = []
    fetch = s3fs.core.S3File._fetch_range

    def counted(self, start, end):
        data = fetch(self, start, end)
        sent.append(len(data))
        return data

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counted)
    data = (VIDEOS / "testvideo.mp4").read_bytes()  # its index follows its media data
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="reads")
    Storage(StorageConfig(endpoint_url=s3_server)).write_atomic("s3://reads/testvideo.mp4", data)
    rows = run_cpu_stages("s3://reads/testvideo.mp4", f"storage.endpoint_url={s3_server}",
                          "scenes.detectors=[{kind: adaptive}]", stages=("scenes",))
    (summary,) = [r.meta for r in rows if r.kind == "summary"]
    assert summary["source_sha1"] == hashlib.sha1(data).hexdigest()
    assert summary["source_bytes"] == summary["bytes_read"] == len(data)
    # The in-order handle's read-ahead also pulls the index the second handle read: at most that much more.
    index = len(data) - next(at + size for kind, at, size in atoms(data) if kind == "mdat")
    assert len(data) <= sum(sent) <= len(data) + index


def test_storage_rides_out_a_brief_outage_and_names_the_object_after_a_long_one(s3_server):
    """The object store goes away: a write retries through a short outage, and after a long one fails with one
    error naming the object (the writer then stops; a rerun resumes)."""
    import threading
    import time

    import pytest
    from jobs.loopback_s3 import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="flaky")
    storage = Storage(StorageConfig(endpoint_url=endpoint))
    server.stop()  # down: connections are refused

    def come_back():
        time.sleep(0.8)
        server.__init__(ip_address="127.0.0.1", port=port)  # the same store (moto keeps its state per process)
        server.start()

    threading.Thread(target=come_back).start()
    storage.write_atomic("s3://flaky/a.bin", b"x" * 100)
    assert storage.read_bytes("s3://flaky/a.bin") == b"x" * 100
    server.stop()
    t = time.time()
    # Fewer retries than the default's four attempts (about 35 s down): the same path, in half the time.
    with pytest.raises(OSError, match=r"s3://flaky/b.bin: storage error after 2 attempts"):
        Storage(StorageConfig(endpoint_url=endpoint), retries=1).write_atomic("s3://flaky/b.bin", b"y")
    assert time.time() - t < 30  # gives up in bounded time instead of hanging


def test_a_range_read_takes_that_range_only(s3_server, tmp_path):
    """What the trainer reads a subject crop of another clip's shard with: one request, those bytes."""
    data = bytes(range(256)) * 4096  # 1 MB
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="ranges")
    storage = Storage(StorageConfig(endpoint_url=s3_server))
    storage.write_atomic("s3://ranges/shard.tar", data)
    (tmp_path / "shard.tar").write_bytes(data)
    for uri in ("s3://ranges/shard.tar", str(tmp_path / "shard.tar")):
        assert storage.read_range(uri, 300_001, 777) == data[300_001:300_778]
        assert storage.read_range(uri, len(data) - 10, 100) == data[-10:]  # short at the end: the caller checks


def test_an_object_replaced_while_it_is_read_comes_back_whole(s3_server):
    """A lease is renewed (replaced) while a commit reads it: the read gets one version or the other, never an
    error. Opened, then read, s3fs refused an object whose ETag changed in between, and the job stopped."""
    import threading

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="renewed")
    storage = Storage(StorageConfig(endpoint_url=s3_server))
    versions = [bytes([k]) * 2000 for k in range(2)]
    storage.write_atomic("s3://renewed/lease.json", versions[0])
    stop = threading.Event()

    def renew():
        k = 0
        while not stop.is_set():
            k ^= 1
            storage.write_atomic("s3://renewed/lease.json", versions[k])

    writer = threading.Thread(target=renew)
    writer.start()
    try:
        reads = [storage.read_bytes("s3://renewed/lease.json") for _ in range(150)]
    finally:
        stop.set()
        writer.join()
    assert set(reads) <= set(versions)

"""Hostile and broken shards and manifest parts: every reader (the trainer's stream, curation's validate, show and
stats) skips what it cannot use with a counted reason, or says in one line which file is wrong, and never allocates
what a header declares instead of what the file holds."""

import contextlib
import re
import resource
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import contract as C
from common.shard_reader import MAX_JSON, ShardCorrupt, iter_samples
from common.storage import Storage
from curation.__main__ import main
from training.config import JobError
from training.data.fit import dataset_fit
from training.data.split import held_out
from training.data.stream import ShardStream

from .data_fixtures import data_preset, standard_clips, write_dataset

GiB = 1 << 30
END = b"\0" * 2 * tarfile.BLOCKSIZE
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


# -- tar members as bytes, hostile ones included ----------------------------------------------------------------
def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytearray:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return bytearray(info.tobuf(tarfile.GNU_FORMAT))  # GNU: sizes of any length, in base 256


def _with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % tarfile.calc_chksums(header)[0]
    return bytes(header)


def plain(name: str, data: bytes) -> bytes:
    return bytes(_header(name, len(data))) + _pad(data)


def declaring(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A header declaring ``size`` bytes, followed by one block of them."""
    return bytes(_header(name, size, kind)) + _pad(b"a" * 100)


def gnu_sparse(name: str, declared: int) -> bytes:
    """A GNU sparse member of one data block at the end of ``declared`` bytes of hole: 1 KB in the archive."""
    header = _header(name, tarfile.BLOCKSIZE, tarfile.GNUTYPE_SPARSE)
    header[386:410] = tarfile.itn(declared - tarfile.BLOCKSIZE, 12, tarfile.GNU_FORMAT) + tarfile.itn(
        tarfile.BLOCKSIZE, 12, tarfile.GNU_FORMAT)
    header[483:495] = tarfile.itn(declared, 12, tarfile.GNU_FORMAT)  # the size it expands to
    return _with_checksum(header) + b"x" * tarfile.BLOCKSIZE


def pax_sparse(name: str, declared: int) -> bytes:
    """The same in the pax sparse format 1.0 (GNU tar's default with --sparse --format=pax)."""
    info = tarfile.TarInfo(name)
    data = _pad(b"1\n%d\n%d\n" % (declared - tarfile.BLOCKSIZE, tarfile.BLOCKSIZE)) + b"x" * tarfile.BLOCKSIZE
    info.size = len(data)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": str(declared)}
    return info.tobuf(tarfile.PAX_FORMAT) + data


def negative_size(name: str) -> bytes:
    header = _header(name, 0)
    header[124:136] = tarfile.itn(-tarfile.BLOCKSIZE, 12, tarfile.GNU_FORMAT)
    return _with_checksum(header)


def pax_chain(links: int) -> bytes:
    """Extended headers, each applying to the next: tarfile follows them by recursion."""
    return b"".join(declaring("././@PaxHeader", 0, tarfile.XHDTYPE)[:tarfile.BLOCKSIZE] for _ in range(links))


@contextlib.contextmanager
def address_space(extra: int):
    """No more than ``extra`` bytes of memory mapped beyond what the process has now: an allocation past it fails
    with MemoryError instead of taking the machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = int(re.search(r"VmSize:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# -- one reader, hostile headers ---------------------------------------------------------------------------------
GOOD_A = plain("a.json", b'{"clip_id": "a"}') + plain("a.caption.txt", b"first")
GOOD_C = plain("c.json", b'{"clip_id": "c"}')
SPARSE = "a sparse file, declaring 8589934592 bytes"
HOSTILE = {  # the member after sample "a": (its tar bytes, the samples read, why it is rejected or the rest lost)
    "GNU sparse member of 8 GiB": (gnu_sparse("b.mp4", 8 * GiB), ["a", "c"], SPARSE),
    "pax sparse member of 8 GiB": (pax_sparse("b.mp4", 8 * GiB), ["a", "c"], SPARSE),
    "8 GiB declared, 1 KB in the file": (declaring("b.mp4", 8 * GiB), ["a"], "truncated: a member runs to byte"),
    "250 MB declared (under the limit), 1 KB in the file": (declaring("b.mp4", 250 * 10**6), ["a"], "truncated"),
    "2^80 bytes declared": (declaring("b.mp4", 2**80), ["a"], "truncated"),
    # At a bad header, whether "a" was complete is unknown: it is lost with the rest.
    "a pax header of 8 GiB": (declaring("././@PaxHeader", 8 * GiB, tarfile.XHDTYPE), [], "headers of more than"),
    "a GNU long name of 8 GiB": (declaring("././@LongLink", 8 * GiB, tarfile.GNUTYPE_LONGNAME), [],
                                 "headers of more than"),
    "3000 chained pax headers": (pax_chain(3000) + plain("b.mp4", b"x"), [], "headers of more than"),
    "a negative size": (negative_size("b.mp4"), [], "declares a negative size"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_member_is_skipped_or_ends_the_shard_without_allocating_what_it_declares(tmp_path, kind):
    member, kept, reason = HOSTILE[kind]
    path = tmp_path / "hostile.tar"
    path.write_bytes(GOOD_A + member + GOOD_C + END)
    assert path.stat().st_size < 4 * 10**6
    keys, rejected, lost = [], [], ""
    with address_space(128 * 2**20), open(path, "rb") as f:
        try:
            for sample, _, _ in iter_samples(f, 0, 0, 0, reject=lambda name, why: rejected.append(why)):
                keys.append(sample.key)
        except ShardCorrupt as e:
            lost = str(e)
    assert keys == kept
    if kept == ["a", "c"]:  # skipped with a counted reason, the rest read
        assert rejected == [reason] and not lost
    else:  # the shard is damaged from there on
        assert reason in lost, (lost, rejected)


# -- the trainer ------------------------------------------------------------------------------------------------
def test_broken_json_members_are_counted_corrupt_samples_for_the_trainer(tmp_path, caplog):
    shard = tmp_path / "shard.tar"
    broken = {"deep": DEEP_JSON, "list": b'["deep"]', "huge": b'{"pad": "%s"}' % (b"x" * MAX_JSON)}
    samples = [plain(f"{k}.json", v) + plain(f"{k}.caption.txt", b"broken") for k, v in broken.items()]
    shard.write_bytes(GOOD_A + b"".join(samples) + plain("b.json", b'{"clip_id": "b"}') + END)
    cfg = data_preset("tiny", urls=[str(shard)], shuffle_buffer=1, batch_size=1)
    stream = ShardStream(cfg, [str(shard)], 0, 1, media=False)
    raws = {raw.key: raw for raw in stream.shard_samples(0)}
    assert not held_out(raws["deep"], 0.5)  # the split reads the source id of every sample first
    batches = list(zip(range(2), stream))
    assert [b["key"] for _, b in batches] == [["a"], ["b"]]  # a, the broken three, b: the whole shard
    assert batches[-1][1]["counters"]["samples_corrupt"] == 3
    assert "JSON member nested too deep" in caplog.text and "not an object" in caplog.text
    assert "above the limit of" in caplog.text


def test_a_member_over_data_max_member_mb_is_skipped_with_its_sample(tmp_path):
    shard = tmp_path / "shard.tar"
    shard.write_bytes(plain("a.caption.txt", b"short") + plain("b.caption.txt", b"long " * 400)
                      + plain("c.caption.txt", b"short") + END)
    cfg = data_preset("tiny", urls=[str(shard)], max_member_mb=0.001)  # 1000 bytes
    stream = ShardStream(cfg, [str(shard)], 0, 1, media=False)
    assert [raw.key for raw in stream.shard_samples(0)] == ["a", "c"]  # not b with no caption
    assert stream.counters["members_rejected"] == 1
    with pytest.raises(ValueError, match="max_member_mb"):
        data_preset("tiny", urls=["x"], max_member_mb=0)


# -- curation's validate, show and stats -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "ds"
    write_dataset(out, standard_clips(), clips_per_shard=5)
    return out


def copy_with(dataset, tmp_path, clip: str, replace: dict[str, bytes]):
    """A copy of the dataset whose shard holding ``clip`` has the tar bytes ``replace[name]`` in place of member
    ``name``; returns (copy, shard)."""
    bad = tmp_path / "ds"
    shutil.copytree(dataset, bad)
    shard = next(p for p in (bad / C.SHARDS_DIR).iterdir() if f"{clip}.mp4" in tarfile.open(p).getnames())
    with tarfile.open(shard) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    shard.write_bytes(b"".join(replace.get(name) or plain(name, data) for name, data in members) + END)
    return bad, shard


@pytest.mark.parametrize("sparse", [gnu_sparse, pax_sparse])
def test_a_sparse_member_of_8_gib_in_a_small_shard_allocates_nothing_in_any_reader(dataset, tmp_path, capsys, sparse):
    bad, shard = copy_with(dataset, tmp_path, "clip-01", {"clip-01.mp4": sparse("clip-01.mp4", 8 * GiB)})
    assert shard.stat().st_size < 100_000
    cfg = data_preset("tiny", urls=[str(shard)])
    stream = ShardStream(cfg, [str(shard)], 0, 1)
    with address_space(2 * GiB):
        keys = [raw.key for raw in stream.shard_samples(0)]
        assert main(["validate", str(bad)]) == 1
        assert main(["show", str(bad), "clip-01", "--out", str(tmp_path / "1.png")]) == 2
        assert main(["show", str(bad), "clip-02", "--out", str(tmp_path / "2.png")]) == 0  # read past it
    assert keys == ["clip-00", "clip-02", "clip-03", "clip-04"] and stream.counters["members_rejected"] == 1
    out, err = capsys.readouterr()
    assert f"{shard.name}: unsafe or unknown member 'clip-01.mp4' (a sparse file, declaring 8589934592 bytes)" in out
    assert f"clip clip-01: missing from {shard.name}: caption.txt, json, mp4" in out
    assert err.strip() == f"show: clip 'clip-01' has no mp4 in {shard.stem}.tar (run validate)"


@pytest.mark.parametrize("json", {"deep": DEEP_JSON, "over the limit": b'{"clip_id": "clip-01", "pad": "%s"}' % (
    b"x" * MAX_JSON), "a list": b'["clip-01"]'}.items(), ids=lambda kv: kv[0])
def test_validate_reports_a_json_member_it_cannot_parse(dataset, tmp_path, capsys, json):
    bad, shard = copy_with(dataset, tmp_path, "clip-01", {"clip-01.json": plain("clip-01.json", json[1])})
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{shard.stem}.tar: clip-01.json is not the JSON of clip clip-01"
    # a member of another size moved every crop after it
    assert out[1].startswith(f"{shard.stem}.tar: ") and "crop(s) not at the byte ranges the manifest gives" in out[1]
    assert out[2:] == [f"2 problem(s) in {bad}"]


def test_show_on_a_truncated_shard_says_so_in_one_line(dataset, tmp_path, capsys):
    bad, shard = copy_with(dataset, tmp_path, "clip-03", {})
    with tarfile.open(shard) as t:
        mp4 = t.getmember("clip-03.mp4")
    shard.write_bytes(shard.read_bytes()[:mp4.offset_data + mp4.size // 2])
    assert main(["show", str(bad), "clip-00", "--out", str(tmp_path / "0.png")]) == 0  # before the cut
    capsys.readouterr()
    assert main(["show", str(bad), "clip-03", "--out", str(tmp_path / "3.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"show: {shard}: damaged (") and "curation validate" in err, err
    assert not (tmp_path / "3.png").exists()


def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


PARTS = {  # a manifest part another program or version wrote
    "fps as text": lambda good: _with_column(good, "fps", pa.array(["25"] * len(good))),
    "only clip_id": lambda good: good.select(["clip_id"]),
    "not Parquet": lambda good: b"PAR1 this is not a parquet file PAR1",
}


@pytest.mark.parametrize("part", PARTS)
def test_a_manifest_part_of_another_schema_is_named_by_every_reader(dataset, tmp_path, capsys, part):
    bad = tmp_path / "ds"
    shutil.copytree(dataset, bad)
    parts = sorted((bad / C.MANIFEST_DIR).iterdir())
    made = PARTS[part](pq.read_table(parts[0]))
    if isinstance(made, bytes):
        parts[0].write_bytes(made)
    else:
        pq.write_table(made, parts[0])
    named = f"{parts[0]}: not a part of this dataset's schema ("
    assert main(["stats", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stats: {named}"), err
    assert main(["show", str(bad), "clip-00", "--out", str(tmp_path / "0.png")]) == 2
    assert capsys.readouterr().err.startswith(f"show: {named}")
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(named)
    assert f"{parts[0].stem}.tar: member(s) with no manifest row" in out  # its shard is no longer committed
    with pytest.raises(JobError, match=re.escape(named)):
        dataset_fit(data_preset("tiny", urls=[str(bad)]), media=True, holdout=0.0, max_validation=0)


def test_a_manifest_part_written_before_the_contract_gained_columns_reads_them_as_null(dataset, tmp_path):
    old = tmp_path / "ds"
    shutil.copytree(dataset, old)
    parts = sorted((old / C.MANIFEST_DIR).iterdir())
    pq.write_table(pq.read_table(parts[0]).drop_columns(sorted(C.LATER_COLUMNS)), parts[0])
    table = C.read_manifest(Storage(), str(old))
    assert table.schema == C.MANIFEST_SCHEMA and table.column("bit_depth").null_count >= 1
    assert main(["validate", str(old)]) == 0

"""Each source byte pulled from storage once: the reader FFmpeg reads a source through counts what it pulls and
hashes the whole file from those same bytes, however FFmpeg seeks; the scene pass names clips by that hash."""

import errno
import hashlib
import io
import random
import struct

import av
import pytest

from curation.video import source_file
from curation.video.source_file import SourceFile

from .conftest import VIDEOS
from .pipeline_helpers import run_cpu_stages
from .test_faults import write_video

MOOV_AT_END = VIDEOS / "testvideo.mp4"  # a real 2.4 MB MP4 whose index follows its media data, as PyAV writes them


def remux(src, dst, fmt=None, options=None):
    """``src``'s video packets in another container (``fmt``) or layout (``options``: faststart), not re-encoded."""
    with av.open(str(src)) as i, av.open(str(dst), "w", format=fmt, options=options or {}) as o:
        s = i.streams.video[0]
        t = o.add_stream_from_template(s)
        for p in i.demux(s):
            if p.dts is not None:
                p.stream = t
                o.mux(p)
    return dst


def atoms(data: bytes) -> list[tuple[str, int, int]]:
    """The top-level MP4 atoms: (type, offset, size)."""
    out, at = [], 0
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        out.append((kind.decode(), at, size))
        at += size
    return out


class Logged(io.BytesIO):
    def __init__(self, data: bytes, reads: list):
        super().__init__(data)
        self.reads = reads

    def read(self, n=-1):
        at = self.tell()
        chunk = super().read(n)
        self.reads.append((at, len(chunk)))
        return chunk


class Recorded:
    """Opens ``data`` as storage would, keeping each handle's reads as (offset, length)."""

    def __init__(self, data: bytes):
        self.data, self.reads = data, []

    def __call__(self) -> Logged:
        self.reads.append([])
        return Logged(self.data, self.reads[-1])


def demux_all(file) -> int:
    """What the scene pass asks of a source's file: every packet of its video stream (decoding reads no more), up
    to a damaged tail."""
    packets = 0
    with av.open(file) as c:
        try:
            for p in c.demux(c.streams.video[0]):
                packets += bool(p.size)
        except av.error.FFmpegError:
            pass
    return packets


def in_order(reads: list[tuple[int, int]]) -> bool:
    """From 0, each read starts at or after the end of the one before: no step back, no byte twice."""
    ends = [0, *(at + n for at, n in reads)]
    return reads[0][0] == 0 and all(at >= end for (at, _), end in zip(reads, ends))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("layouts")
    fast = remux(MOOV_AT_END, d / "faststart.mp4", options={"movflags": "faststart"})
    mkv = remux(MOOV_AT_END, d / "video.mkv", fmt="matroska")
    assert [a for a, _, _ in atoms(MOOV_AT_END.read_bytes())][-1] == "moov"
    assert [a for a, _, _ in atoms(fast.read_bytes())][:3] == ["ftyp", "moov", "free"]
    return {"moov at end": MOOV_AT_END, "faststart": fast, "matroska": mkv}


@pytest.mark.parametrize("layout", ["moov at end", "faststart", "matroska"])
def test_every_byte_is_pulled_once_and_hashed(layouts, layout):
    data = layouts[layout].read_bytes()
    raw = Recorded(data)
    with SourceFile(raw) as f:
        assert demux_all(f) == 720
        decoded_reads = f.bytes_read
        assert f.sha1() == hashlib.sha1(data).hexdigest()
    # Exactly: FFmpeg's step back from the index to the media data is served from memory, the index read out of
    # order is kept until the hash reaches it. Before: the whole file again for the SHA-1 (3x on S3, with fsspec's
    # read-ahead).
    assert f.bytes_read == decoded_reads == f.size == len(data)
    # The first handle reads the file in order, once, so storage that reads ahead streams it; only the index at
    # the end of an MP4 comes through a second one.
    assert in_order(raw.reads[0]) and len(raw.reads) == (2 if layout == "moov at end" else 1)


@pytest.mark.parametrize("case", ["damaged tail", "junk after the media"])
def test_what_the_decoder_never_reads_is_read_for_the_hash_once(layouts, case):
    if case == "damaged tail":
        data = bytearray(layouts["matroska"].read_bytes())
        data[len(data) // 2 :] = random.Random(0).randbytes(len(data) - len(data) // 2)
    else:
        data = layouts["faststart"].read_bytes() + random.Random(1).randbytes(3_000_000)
    with SourceFile(Recorded(bytes(data))) as f:
        packets = demux_all(f)
        asked = f.bytes_read
        assert f.sha1() == hashlib.sha1(data).hexdigest()
    assert (packets < 720) if case == "damaged tail" else (asked < len(data))
    assert f.bytes_read == len(data)


def test_a_full_side_buffer_reads_the_index_again_and_hashes_right():
    data = MOOV_AT_END.read_bytes()
    media_end = next(at + size for kind, at, size in atoms(data) if kind == "mdat")
    with SourceFile(Recorded(data), ahead_cap=1000) as f:  # the index (7.6 KB) does not fit
        demux_all(f)
        assert f.sha1() == hashlib.sha1(data).hexdigest()
    assert len(data) < f.bytes_read <= len(data) + (len(data) - media_end)  # what follows the media, read twice


def test_seeks_ahead_behind_and_far_keep_one_read_per_byte(monkeypatch):
    monkeypatch.setattr(source_file, "GAP", 1000)
    monkeypatch.setattr(source_file, "BEHIND", 2000)
    data = random.Random(2).randbytes(100_000)
    raw = Recorded(data)
    f = SourceFile(raw)

    def read_at(at, n):  # as FFmpeg reads: again after a short read, until the end
        f.seek(at)
        out = b""
        while len(out) < n and (chunk := f.read(n - len(out))):
            out += chunk
        return out

    assert read_at(0, 100) == data[:100]
    assert read_at(600, 100) == data[600:700] and f.bytes_read == 700  # a skip within GAP: the gap read then
    assert read_at(90_000, 500) == data[90_000:90_500] and f.bytes_read == 1200  # far ahead: kept
    assert read_at(50, 100) == data[50:150] and f.bytes_read == 1200  # a step back: from memory
    assert f.seek(0, 2) == len(data)
    at = 700
    while chunk := read_at(at, 4096):  # on to the end, over what is kept
        assert chunk == data[at : at + len(chunk)]
        at += len(chunk)
    assert at == len(data) and f.frontier == len(data) and f.bytes_read == len(data)
    assert read_at(10, 100) == data[10:110] and f.bytes_read == len(data) + 100  # far behind: read again, counted
    assert f.sha1() == hashlib.sha1(data).hexdigest()
    assert in_order(raw.reads[0]) and len(raw.reads) == 2


def test_a_failed_read_fails_the_hash_too():
    data = MOOV_AT_END.read_bytes()

    class FailsAfter(io.BytesIO):
        def read(self, n=-1):
            if self.tell() + n > 1_000_000:
                raise OSError(errno.EIO, "Input/output error")
            return super().read(n)

    with SourceFile(lambda: FailsAfter(data)) as f:
        with pytest.raises(OSError, match="Input/output error"):
            demux_all(f)
        assert f.read(100) == b""  # FFmpeg retrying sees the end, and raises the failure it was handed once
        # FFmpeg may take a failed read for the end of the file: the source then fails here, never ends early.
        with pytest.raises(OSError, match="Input/output error"):
            f.sha1()


def scene_pass(path) -> list:
    return run_cpu_stages(path, "scenes.detectors=[{kind: adaptive}]", "encode.hold_mb=0", stages=("scenes",))


def test_the_scene_pass_names_clips_by_the_sha1_of_the_bytes_it_decoded(layouts, tmp_path):
    made = tmp_path / "made.mp4"  # as the tests make videos: PyAV's muxer, the index at the end
    write_video(made, [40 * k for k in range(60)])
    spans = {}
    for name, path in [*layouts.items(), ("made by PyAV", made)]:
        data = path.read_bytes()
        sha1 = hashlib.sha1(data).hexdigest()
        rows = scene_pass(path)
        (summary,) = [r.meta for r in rows if r.kind == "summary"]
        clips = [r.meta for r in rows if r.kind in ("clip", "dropped")]
        assert clips and summary["source_sha1"] == sha1 and all(c["source_sha1"] == sha1 for c in clips), name
        assert all(c["clip_id"].startswith(sha1[:16]) for c in clips)
        assert summary["source_bytes"] == summary["bytes_read"] == len(data), name
        with av.open(str(path)) as c:  # by path, FFmpeg's own reads: the same frames
            assert summary["num_frames"] == sum(1 for _ in c.decode(video=0))
        spans[name] = [(c["start_frame"], c["end_frame"], c.get("dropped_by")) for c in clips]
    # One video in three layouts: the same clips, whatever order FFmpeg read it in.
    assert spans["moov at end"] == spans["faststart"] == spans["matroska"]


def test_clips_the_scene_pass_could_not_hold_count_the_second_read(layouts):
    path = layouts["moov at end"]
    size = path.stat().st_size
    # Its burned-in copyright line is kept (max_text_area null): the scene pass's text check would drop every clip.
    args = ("scenes.detectors=[{kind: adaptive}]", "filters.max_text_area=null")
    held = run_cpu_stages(path, *args, stages=("scenes", "encode"))
    cut = run_cpu_stages(path, *args, "encode.hold_mb=0", stages=("scenes", "encode"))
    (summary_held,) = [r.meta for r in held if r.kind == "summary"]
    (summary_cut,) = [r.meta for r in cut if r.kind == "summary"]
    assert [r.kind for r in held].count("clip") == [r.kind for r in cut].count("clip") > 0
    assert summary_held["bytes_read"] == size  # every clip encoded in the one pass: each byte read once
    assert size < summary_cut["bytes_read"] <= 2 * size  # the encode stage decoded the clips' stretches again

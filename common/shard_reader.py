"""The one reader of shard tars (the trainer's stream, curation's repack and validation): WebDataset samples out of
a tar, with the byte positions needed to resume or re-read them.

Members are read into memory, never extracted: a member's name only gives its sample key and its field, and
names that are not plain ``<key>.<field>`` (a '/', '..', a key outside the contract's alphabet) are rejected.
Only the contract's fields are read at all, so a stray member (``.pyd``, ``.pth``, ...) is never decoded.

Shards are untrusted input, so what a reader allocates is bounded by the bytes really in the file, never by what a
header declares: only plain files are read (a sparse member declares a size its few bytes in the archive expand
to), a member's data must lie within the file (else the shard is truncated) and be at most ``max_member`` bytes,
the headers before one member (pax records, GNU long names, sparse maps) at most ``MAX_HEADERS`` bytes, and JSON
members are parsed by ``parse_json`` only.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import IO, Callable, Iterator

from common import contract as C

BLOCK = tarfile.BLOCKSIZE
MAX_MEMBER = 256 * 10**6  # bytes; the trainer's is data.max_member_mb
MAX_HEADERS = 16 * BLOCK  # a pax record of a path as long as Linux allows, and the other fields
MAX_JSON = 4 * 10**6  # a manifest row with six subject masks is tens of KB; a parse takes up to ~25x the text


class ShardCorrupt(Exception):
    """The shard is truncated or not a valid tar from some point on: the rest of it is skipped."""


@dataclass
class RawSample:
    """One sample's contract members as bytes, and where it starts in its shard."""

    shard: int  # index into the run's shard list
    offset: int  # byte offset of the header of its first member
    index: int  # its number within the shard
    key: str
    members: dict[str, bytes]  # field ("mp4", "caption.txt", ...) -> bytes

    @property
    def position(self) -> list[int]:
        return [self.shard, self.offset, self.index]


def parse_json(data: bytes) -> dict:
    """A sample's JSON member (its manifest row, an object). ValueError, as for any other malformed member, when it
    is over MAX_JSON bytes, not an object, or nested deeper than the parser's recursion allows (its RecursionError
    would otherwise crash the reader)."""
    if len(data) > MAX_JSON:
        raise ValueError(f"JSON member of {len(data)} bytes, above the limit of {MAX_JSON}")
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError("JSON member nested too deep") from None
    if not isinstance(value, dict):
        raise ValueError(f"JSON member is a {type(value).__name__}, not an object")
    return value


class _Headers:
    """The shard as tarfile sees it. tarfile reads as many bytes as a header declares (a pax record, a GNU long
    name, a sparse map, a chain of them) before anything can check them: here the headers before one member may
    take at most MAX_HEADERS bytes. Members' data is read from the file directly, never through this."""

    def __init__(self, f: IO[bytes]):
        self.f, self.left = f, MAX_HEADERS

    def read(self, n: int) -> bytes:
        self.left -= n
        if self.left < 0:
            raise tarfile.ReadError(f"headers of more than {MAX_HEADERS} bytes before byte {self.f.tell()}")
        return self.f.read(n)

    def seek(self, *args) -> int:
        return self.f.seek(*args)

    def tell(self) -> int:
        return self.f.tell()


def _members(tar: tarfile.TarFile, headers: _Headers, size: int) -> Iterator[tarfile.TarInfo]:
    """The tar's members, one at a time, each with a fresh header budget. The one before must end within the file
    (tarfile would seek past it) and none may end before its data starts (tarfile would read it again for ever)."""
    while True:
        _check_in_file(tar, size)
        headers.left = MAX_HEADERS
        info = tar.next()
        if info is None:
            return
        tar.members.clear()  # tarfile keeps every header it read: a shard of many tiny members would fill memory
        if info.size < 0 or tar.offset < info.offset_data:
            raise ShardCorrupt(f"member {info.name!r} declares a negative size")
        yield info


def _check_in_file(tar: tarfile.TarFile, size: int) -> None:
    """The last member's data (which ends where tarfile looks for the next header) must end within the file."""
    if tar.offset > size:
        raise ShardCorrupt(f"truncated: a member runs to byte {tar.offset}, the file ends at byte {size}")


def iter_samples(f: IO[bytes], shard: int, offset: int, index: int, stride: int = 1, phase: int = 0,
                 reject: Callable[[str, str], None] = lambda name, why: None,
                 fields: Callable[[str], bool] = C.is_field,
                 max_member: int = MAX_MEMBER) -> Iterator[tuple[RawSample, int, int]]:
    """Samples ``index, index+1, ...`` of the tar in ``f`` from byte ``offset`` (a sample's first header), keeping
    those whose number is ``phase`` modulo ``stride``. Yields (sample, offset, index) of the sample after it, the
    position to resume from. Only the members whose field ``fields`` admits (contract fields) are read; the rest,
    and the members of other samples, are seeked over. Members with an unsafe name, and those it would read that
    are not plain files of at most ``max_member`` bytes, are passed to ``reject``; a sample missing one of the
    latter is not yielded (it would train without its caption, say). A truncated or corrupt tar raises ShardCorrupt
    after the samples before the damage; I/O errors propagate for the caller to retry."""
    size = f.seek(0, 2)
    f.seek(offset)
    headers = _Headers(f)
    key, start, members, complete = None, offset, {}, True
    try:
        tar = tarfile.open(fileobj=headers, mode="r:")
        for info in _members(tar, headers, size):
            try:
                member_key, field = C.split_member(info.name)
            except ValueError as e:
                reject(info.name, str(e))
                continue
            if member_key != key:
                if key is not None:
                    if index % stride == phase and complete:
                        yield RawSample(shard, start, index, key, members), info.offset, index + 1
                    index += 1
                key, start, members, complete = member_key, info.offset, {}, True
            if index % stride == phase and fields(field):
                refused = _refused(info, max_member)
                if refused:
                    reject(info.name, refused)
                    complete = False
                elif field in members:  # which copy is meant is unknown: the first one read stays
                    reject(info.name, "appears twice")
                else:
                    members[field] = _read(f, tar, info, size)
        end = tar.offset
        _check_end(f, end)
    except (tarfile.TarError, EOFError, ValueError, IndexError) as e:  # tarfile lets some malformed headers raise
        raise ShardCorrupt(f"{e} (in or after sample {key!r})") from None
    if key is not None and index % stride == phase and complete:
        yield RawSample(shard, start, index, key, members), end, index + 1


def _refused(info: tarfile.TarInfo, max_member: int) -> str | None:
    """Why a member is not read: only plain files within the limit are (a sparse one declares a size its few bytes
    in the archive expand to)."""
    if info.issparse():
        return f"a sparse file, declaring {info.size} bytes"
    if not info.isreg():
        return "not a regular file"
    if info.size > max_member:
        return f"{info.size} bytes, above the limit of {max_member} for a member"
    return None


def _read(f: IO[bytes], tar: tarfile.TarFile, info: tarfile.TarInfo, size: int) -> bytes:
    _check_in_file(tar, size)
    f.seek(info.offset_data)
    data = f.read(info.size)
    if len(data) != info.size:
        raise ShardCorrupt(f"unexpected end of data in {info.name!r}")
    return data


def _check_end(f: IO[bytes], end: int) -> None:
    """tarfile stops quietly at a truncated or garbled header; a whole archive ends with a zero block there."""
    f.seek(end)
    block = f.read(BLOCK)
    if len(block) < BLOCK:
        raise ShardCorrupt(f"truncated at byte {end} (no end-of-archive block)")
    if block.count(0) != BLOCK:
        raise ShardCorrupt(f"garbage instead of a member header at byte {end}")

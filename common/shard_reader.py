"""The one reader of shard tars (the trainer's stream, curation's repack and validation): WebDataset samples out of
a tar, with the byte positions needed to resume or re-read them.

Members are read into memory, never extracted: a member's name only gives its sample key and its field, and
names that are not plain ``<key>.<field>`` (a '/', '..', a key outside the contract's alphabet) are rejected.
Only the contract's fields are read at all, so a stray member (``.pyd``, ``.pth``, ...) is never decoded.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import IO, Callable, Iterator

from common import contract as C

BLOCK = tarfile.BLOCKSIZE


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


def _end_of_data(info: tarfile.TarInfo) -> int:
    return info.offset_data + -(-info.size // BLOCK) * BLOCK


def iter_samples(f: IO[bytes], shard: int, offset: int, index: int, stride: int = 1, phase: int = 0,
                 reject: Callable[[str, str], None] = lambda name, why: None,
                 fields: Callable[[str], bool] = C.is_field) -> Iterator[tuple[RawSample, int, int]]:
    """Samples ``index, index+1, ...`` of the tar in ``f`` from byte ``offset`` (a sample's first header), keeping
    those whose number is ``phase`` modulo ``stride``. Yields (sample, offset, index) of the sample after it, the
    position to resume from. Only the members whose field ``fields`` admits (contract fields) are read; the rest,
    and the members of other samples, are seeked over. A truncated or corrupt tar
    raises ShardCorrupt after the samples before the damage; I/O errors propagate for the caller to retry."""
    f.seek(offset)
    key, start, members, last = None, offset, {}, None
    try:
        tar = tarfile.open(fileobj=f, mode="r:")
        for info in tar:
            try:
                if not info.isreg():
                    raise ValueError(f"not a regular file: {info.name!r}")
                member_key, field = C.split_member(info.name)
            except ValueError as e:
                reject(info.name, str(e))
                last = info
                continue
            if member_key != key:
                if key is not None:
                    if index % stride == phase:
                        yield RawSample(shard, start, index, key, members), info.offset, index + 1
                    index += 1
                key, start, members = member_key, info.offset, {}
            if index % stride == phase and fields(field):
                if field in members:  # which copy is meant is unknown: the first one read stays
                    reject(info.name, "appears twice")
                else:
                    members[field] = tar.extractfile(info).read()
            last = info
        end = _end_of_data(last) if last is not None else offset
        _check_end(f, end)
    except (tarfile.TarError, EOFError) as e:
        raise ShardCorrupt(f"{e} (in or after sample {key!r})") from None
    if key is not None and index % stride == phase:
        yield RawSample(shard, start, index, key, members), end, index + 1


def _check_end(f: IO[bytes], end: int) -> None:
    """tarfile stops quietly at a truncated or garbled header; a whole archive ends with a zero block there."""
    f.seek(end)
    block = f.read(BLOCK)
    if len(block) < BLOCK:
        raise ShardCorrupt(f"truncated at byte {end} (no end-of-archive block)")
    if block.count(0) != BLOCK:
        raise ShardCorrupt(f"garbage instead of a member header at byte {end}")

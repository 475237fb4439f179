"""A source's bytes as FFmpeg reads them, pulled from storage once: counted, and hashed in file order.

FFmpeg reads a source out of order: an MP4 whose index (``moov``) follows its media data is read at the head, then
at the tail, then from the head on; demuxers skip ahead and step back. ``SourceFile`` hands FFmpeg what it asks
for and builds the SHA-1 of the whole file from those same bytes:

- Bytes ``0 .. frontier`` are hashed. A read at the frontier, or a little past it (a skip of up to ``GAP``: the
  gap is read then), moves it on through one handle that only ever reads on in file order, so storage that reads
  ahead (fsspec's caches) streams the file once.
- A read further on (the index at the tail) goes through a second handle, and its bytes are kept, up to
  ``ahead_cap``, until the frontier reaches them; beyond the cap they are read again then.
- The last ``BEHIND`` bytes before the frontier are kept as well: FFmpeg stepping back a little (from the index to
  the media data right after the header) reads them from memory.
- ``sha1()`` reads on to the end what FFmpeg never asked for (a damaged tail the decoder gave up on, an atom after
  the media).

``bytes_read`` counts every byte pulled from storage, re-reads included: what reading the source cost.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import IO, Callable

GAP = 1 << 20  # a skip ahead of the frontier up to this is read through: cheaper than keeping what follows it
BEHIND = 2 * GAP  # bytes behind the frontier kept for a demuxer that steps back, over a gap read through too
AHEAD_CAP = 64 << 20  # bytes read ahead of the frontier kept until it reaches them
CHUNK = 4 << 20  # the most one storage read asks for


class SourceFile:
    """The file object ``av.open`` reads a source through (``open_raw`` opens it in storage). With ``hashed``,
    ``sha1()`` is the whole file's; without, reads go straight through and are only counted."""

    def __init__(self, open_raw: Callable[[], IO[bytes]], hashed: bool = True, ahead_cap: int = AHEAD_CAP):
        self._open_raw, self.hashed, self.ahead_cap = open_raw, hashed, ahead_cap
        self._raw = open_raw()  # hashed: reads in file order only
        self._other: IO[bytes] | None = None  # reads anywhere else, opened at the first such read
        self.pos = 0  # where FFmpeg reads next
        self.size: int | None = None  # known once FFmpeg asks or the hash is complete
        self.bytes_read = 0
        self.frontier = 0
        self._sha1 = hashlib.sha1()
        self._kept: list[tuple[int, bytes]] = []  # (offset, bytes), in file order, not overlapping
        self._ahead = 0  # bytes kept ahead of the frontier
        self._error: BaseException | None = None

    # -- the file object FFmpeg sees ----------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        seekable = getattr(self._raw, "seekable", None)
        return seekable is None or seekable()

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2 and self.size is None:
            self.size = self._raw.seek(0, 2)
        self.pos = offset + (0, self.pos, self.size)[whence]
        return self.pos

    def read(self, n: int) -> bytes:
        pos = self.pos
        if self._error is not None or (self.size is not None and pos >= self.size):
            return b""  # after a failed read, the end: FFmpeg raises that failure, not one per retry
        if not self.hashed:
            data = self._pull(pos, n)
        else:
            if self.frontier <= pos <= self.frontier + GAP and self._holding(pos) is None:
                self._advance(pos + n)
            data = self._from_memory(pos, n)
            if data is None:
                data = self._elsewhere(pos, n)
        self.pos += len(data)
        return data

    # -- the hash -------------------------------------------------------------------------------------------------
    def sha1(self) -> str:
        """The SHA-1 of the whole file, reading what was never read. A storage error FFmpeg took for the end of
        the file is raised here: a source whose read failed must fail, not end early."""
        if self._error is not None:
            raise self._error
        self._advance(None)
        self.size = self.frontier
        return self._sha1.hexdigest()

    def _advance(self, to: int | None) -> None:
        """Hash on to offset ``to`` (None: the end), through what is kept ahead and reads in file order."""
        while to is None or self.frontier < to:
            held = self._holding(self.frontier)
            if held is not None:  # kept ahead: it starts right at the frontier
                self._sha1.update(held[1])
                self._ahead -= len(held[1])
                self.frontier += len(held[1])
                continue
            end = self.frontier + CHUNK
            for limit in (to, self._next_kept(self.frontier)):
                if limit is not None:
                    end = min(end, limit)
            data = self._pull(self.frontier, end - self.frontier)
            if not data:
                break
            self._keep(self.frontier, data)
            self._sha1.update(data)
            self.frontier += len(data)
        while self._kept and self._kept[0][0] + len(self._kept[0][1]) <= self.frontier - BEHIND:
            self._kept.pop(0)

    # -- what is kept -----------------------------------------------------------------------------------------------
    def _holding(self, pos: int) -> tuple[int, bytes] | None:
        i = bisect.bisect_right(self._kept, pos, key=lambda p: p[0]) - 1
        if i >= 0 and pos < self._kept[i][0] + len(self._kept[i][1]):
            return self._kept[i]
        return None

    def _next_kept(self, pos: int) -> int | None:
        i = bisect.bisect_right(self._kept, pos, key=lambda p: p[0])
        return self._kept[i][0] if i < len(self._kept) else None

    def _keep(self, at: int, data: bytes) -> None:
        bisect.insort(self._kept, (at, data), key=lambda p: p[0])

    def _from_memory(self, pos: int, n: int) -> bytes | None:
        held = self._holding(pos)
        if held is None:
            return None
        at, data = held
        return data[pos - at : pos - at + n]

    def _elsewhere(self, pos: int, n: int) -> bytes:
        """A read away from the frontier, through the second handle: far ahead (kept while there is room), or
        behind what is kept (a re-read, up to the frontier)."""
        limit = self.frontier if pos < self.frontier else self._next_kept(pos)
        if limit is not None:
            n = min(n, limit - pos)
        data = self._pull(pos, n, other=True)
        if pos > self.frontier and self._ahead + len(data) <= self.ahead_cap:
            self._keep(pos, data)
            self._ahead += len(data)
        return data

    def _pull(self, at: int, n: int, other: bool = False) -> bytes:
        """``n`` bytes at ``at`` from storage, through the second handle if ``other``."""
        try:
            if other and self._other is None:
                self._other = self._open_raw()
            raw = self._other if other else self._raw
            raw.seek(at)
            data = raw.read(n)
        except Exception as e:
            self._error = self._error or e
            raise
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        for raw in (self._raw, self._other):
            if raw is not None:
                raw.close()

    def __enter__(self) -> "SourceFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

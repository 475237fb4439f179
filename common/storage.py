"""One place for local paths, s3:// (any S3-compatible endpoint) and http(s) URIs, on top of fsspec: the curation
job and the trainer's loader both read and write through it."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Callable

import fsspec
from botocore.exceptions import BotoCoreError

log = logging.getLogger(__name__)

# Errors no retry fixes and that fail every write after them: no space left, a read-only or over-quota file system.
STOP_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}

# botocore's connection errors (endpoint unreachable, read timeouts) are not OSErrors.
_RETRYABLE = (ConnectionError, TimeoutError, OSError, BotoCoreError)


@dataclass
class StorageConfig:
    """Object storage options. Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from here."""

    endpoint_url: str | None = None  # any S3-compatible endpoint; None means AWS
    region: str | None = None
    anon: bool = False


class StorageUnavailable(ConnectionError):
    """Storage stayed unreachable or failing through every retry: the environment's fault, not the data's."""


def _not_transient(e: BaseException) -> bool:
    # A missing file, a full or read-only disk, a permission refused: retrying changes nothing.
    return isinstance(e, FileNotFoundError) or isinstance(e, OSError) and e.errno in (*STOP_ERRNOS, errno.EACCES, errno.EPERM)


def _refused(e: BaseException) -> bool:
    # fsspec's http file system reports a refused connection as FileNotFoundError caused by the connection error.
    return isinstance(e, FileNotFoundError) and isinstance(e.__cause__, (ConnectionError, OSError)) and not isinstance(
        e.__cause__, FileNotFoundError)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


class Storage:
    """Opens, lists and atomically writes URIs. Picklable: file systems are created lazily in each process."""

    def __init__(self, cfg: StorageConfig | None = None, retries: int = 3):
        self.cfg = cfg or StorageConfig()
        self.retries = retries

    def fs(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        options = {}
        if uri.startswith("s3://"):
            client = {}
            if self.cfg.endpoint_url:
                client["endpoint_url"] = self.cfg.endpoint_url
            if self.cfg.region:
                client["region_name"] = self.cfg.region
            options = {"client_kwargs": client, "anon": self.cfg.anon}
        return fsspec.core.url_to_fs(uri, **options)

    def _retry(self, what: str, fn):
        """Retry transient storage errors with backoff; a missing file is not transient."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except _RETRYABLE as e:
                if _not_transient(e) and not _refused(e):
                    raise
                if attempt == self.retries:
                    cause = e.__cause__ if _refused(e) else e
                    raise StorageUnavailable(f"{what}: storage error after {self.retries + 1} attempts: {cause}") from e
                time.sleep(0.2 * 2**attempt)

    def open(self, uri: str, mode: str = "rb") -> IO[bytes]:
        if is_local(uri):
            return open(uri.removeprefix("file://"), mode)
        fs, path = self.fs(uri)
        return self._retry(uri, lambda: fs.open(path, mode))

    def read_bytes(self, uri: str) -> bytes:
        """The whole object in one request: one replaced while it is read (``write_atomic``: a lease renewed as a
        commit checks it) comes back whole, old or new. Opened, then read, it failed when the object changed
        between the two (s3fs checks the ETag)."""
        if is_local(uri):
            with open(uri.removeprefix("file://"), "rb") as f:
                return f.read()
        fs, path = self.fs(uri)
        return self._retry(uri, lambda: fs.cat_file(path))

    def read_range(self, uri: str, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (fewer at the end of the object), in one request: an object store sends
        that range only, not a read-ahead block."""
        if is_local(uri):
            with open(uri.removeprefix("file://"), "rb") as f:
                f.seek(offset)
                return f.read(size)
        fs, path = self.fs(uri)
        return self._retry(uri, lambda: fs.cat_file(path, start=offset, end=offset + size))

    def join(self, base: str, *parts: str) -> str:
        return "/".join([base.rstrip("/"), *parts])

    def _files(self, prefix: str, suffix: str) -> dict[str, dict]:
        """The files directly under ``prefix`` ending in ``suffix``: URI -> fsspec's entry; empty if none."""
        fs, path = self.fs(prefix)
        try:
            entries = self._retry(prefix, lambda: fs.ls(path, detail=True))
        except FileNotFoundError:
            return {}
        names = ((e["name"].rstrip("/").rsplit("/", 1)[-1], e) for e in entries if e.get("type") != "directory")
        return {self.join(prefix, n): e for n, e in names if n.endswith(suffix)}

    def list(self, prefix: str, suffix: str = "") -> list[str]:
        """URIs of the files directly under ``prefix`` ending in ``suffix``, sorted; empty if it does not exist."""
        return sorted(self._files(prefix, suffix))

    def list_videos(self, uri: str, extensions: list[str]) -> list[str]:
        """Expand an input URI: a .txt file of URIs, a glob, a folder/prefix (recursive), or one file/URL."""
        exts = tuple(e.lower() for e in extensions)
        if uri.endswith(".txt"):
            try:
                text = self.read_bytes(uri).decode("utf-8-sig")  # editors on Windows start UTF-8 with a BOM
            except FileNotFoundError:
                raise FileNotFoundError(f"the input list {uri} does not exist") from None
            except UnicodeDecodeError as e:
                raise ValueError(f"the input list {uri} is not UTF-8 text ({e.reason} at byte {e.start})") from None
            return read_list(text)
        uri = local_path(uri)
        if uri.startswith(("http://", "https://")):
            return [uri]
        fs, path = self.fs(uri)
        proto = "" if is_local(uri) else uri.split("://", 1)[0] + "://"
        if self._retry(uri, lambda: fs.exists(path)):  # an existing path is a path, even with [ * ? in its name
            if not fs.isdir(path):
                return [uri]
            found = self._retry(uri, lambda: fs.find(path))
        elif any(c in path for c in "*?["):
            found = self._retry(uri, lambda: fs.glob(path))
        else:
            raise FileNotFoundError(f"{uri} does not exist")
        return sorted(proto + p for p in found if p.lower().endswith(exts))

    def modified(self, prefix: str, suffix: str = "") -> dict[str, float]:
        """When each file directly under ``prefix`` ending in ``suffix`` was last written (seconds since the epoch),
        from one listing."""
        out = {}
        for uri, e in self._files(prefix, suffix).items():
            when = e.get("mtime") or e.get("LastModified")  # local files, S3 objects
            if when is not None:
                out[uri] = when.timestamp() if hasattr(when, "timestamp") else float(when)
        return out

    def largest_first(self, uris: list[str]) -> list[str]:
        """``uris`` biggest file first (stable; unknown sizes last): a worker that starts the longest videos
        first never runs one alone at the end of a job while the others idle."""

        def size(uri: str) -> int:
            if uri.startswith(("http://", "https://")):
                return -1  # no cheap way to ask
            try:
                if is_local(uri):
                    return os.path.getsize(uri.removeprefix("file://"))
                fs, path = self.fs(uri)
                return int(fs.info(path).get("size") or -1)
            except Exception:  # noqa: BLE001 - a missing or unreadable source fails when the scene pass opens it, with its own message
                return -1

        with ThreadPoolExecutor(16) as pool:
            sizes = list(pool.map(size, uris))
        return [u for _, u in sorted(zip(sizes, uris), key=lambda su: -su[0])]

    def write_atomic(self, uri: str, data: bytes | None = None, write: Callable[[IO[bytes]], None] | None = None) -> None:
        """Write ``data`` (or what ``write(file)`` writes, streamed) to a temporary name beside ``uri``, then
        rename, so readers never see a partial object."""
        fs, path = self.fs(uri)
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        if is_local(uri):
            os.makedirs(parent, exist_ok=True)
        try:
            if write is not None:
                def stream():
                    with fs.open(tmp, "wb") as f:
                        write(f)
                self._retry(uri, stream)
            else:
                self._retry(uri, lambda: fs.pipe_file(tmp, data))
            self._retry(uri, lambda: fs.mv(tmp, path))
        except BaseException as e:
            if is_local(uri):  # a full disk must not keep what it could not finish (an S3 put is whole or nothing)
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            if type(e) is OSError and e.errno is not None and not e.filename:
                raise OSError(e.errno, e.strerror, uri) from None  # "No space left on device" says where
            raise

    def remove(self, uri: str) -> None:
        fs, path = self.fs(uri)
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass

    def remove_tree(self, prefix: str) -> None:
        """Everything under ``prefix``; nothing when it does not exist."""
        fs, path = self.fs(prefix)
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def list_temporaries(self, prefix: str) -> list[str]:
        """Left-over temporary files of ``write_atomic`` under ``prefix`` (from a killed run)."""
        fs, path = self.fs(prefix)
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        proto = "" if is_local(prefix) else prefix.split("://", 1)[0] + "://"
        return [proto + e for e in entries if e.rsplit("/", 1)[-1].startswith(".") and e.endswith(".tmp")]


def read_list(text: str) -> list[str]:
    """The URIs of an input list as people write them: one per line, blank lines and ``#`` comments (indented or
    not) skipped, ``file://`` URIs decoded to paths, each source once (in the order first listed)."""
    uris = [local_path(ln.strip()) for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    unique = list(dict.fromkeys(uris))
    if len(unique) < len(uris):
        log.warning("the input list names %d source(s) more than once; each is processed once", len(uris) - len(unique))
    return unique


def local_path(uri: str) -> str:
    """``file:///a%20b.mp4`` (percent-encoded, as file managers and ``Path.as_uri()`` write it) as the path
    ``/a b.mp4``; any other URI (one of another host too: it fails as that source's error) unchanged."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return uri
    return urllib.parse.unquote(parsed.path)

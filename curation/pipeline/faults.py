"""Whose fault a failure is, which decides what happens to its source.

- ``source``: the source's own fault (cannot be decoded, no video stream, damaged data). Recorded in
  ``errors/``; the source is done (status ``error``: ``retry_errors=true`` tries it again).
- ``environment``: the machine's or the network's fault (permission denied, a refused connection, storage that
  stayed down through its retries). The source is not marked done, so the rerun processes it; the job goes on.
- ``stop``: an environment fault that would fail every source after it as well (no space left, a read-only
  or over-quota file system). The source is not marked done and the job stops with that one message.
- ``job``: the job's own fault, its config or its code: an error only a bug or a wrong setting raises (a string
  where a number belongs is a TypeError). The source is not marked done; the rerun after the fix processes it.

A failure no source is known to cause (not a ``SourceError``, not the decoder rejecting data) that the first
failing sources of a run all share is the job's fault as well (``curation.sink.writer``): the job stops.
"""

from __future__ import annotations

import errno
from typing import Literal

from common.storage import STOP_ERRNOS

Fault = Literal["source", "environment", "stop", "job"]

ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.EMFILE, errno.ENFILE,
                      errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}


# Raised by a bug or a wrong setting, never by a source's data (which fails as SourceError or a decoder error).
JOB_ERRORS = (TypeError, AttributeError, NameError, ImportError, AssertionError, NotImplementedError)


class SourceError(Exception):
    """The source's own fault, in words written for people (error rows keep the message as it is)."""


class JobStopped(Exception):
    """The environment failed in a way that would fail every further source; the message says what and where."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message  # kept apart from args, which Ray Data extends with its retry advice

    def __str__(self) -> str:
        return self.message


def _chain(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def fault_of(exc: BaseException) -> Fault:
    from botocore.exceptions import BotoCoreError

    fault: Fault = "source"
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in STOP_ERRNOS:
            return "stop"
        if isinstance(e, (ConnectionError, TimeoutError, BotoCoreError)) or (
                isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS):
            fault = "environment"
    if fault == "source" and isinstance(exc, JOB_ERRORS):
        return "job"
    return fault


def explained(exc: BaseException) -> bool:
    """Whether the failure is one a source is known to cause: a SourceError, or the decoder rejecting its data."""
    import av

    return any(isinstance(e, (SourceError, av.error.FFmpegError)) for e in _chain(exc))

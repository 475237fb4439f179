"""Whose fault a failure is, which decides what happens to its source.

- ``source``: the source's own fault (cannot be decoded, no video stream, damaged data). Recorded in
  ``errors/``; the source is done (status ``error``: ``retry_errors=true`` tries it again).
- ``environment``: the machine's or the network's fault (permission denied, a refused connection, storage that
  stayed down through its retries). The source is not marked done, so the rerun processes it; the job goes on.
- ``stop``: an environment fault that would fail every source after it as well (no space left, a read-only
  or over-quota file system). The source is not marked done and the job stops with that one message.
"""

from __future__ import annotations

import errno
from typing import Literal

from common.storage import STOP_ERRNOS

Fault = Literal["source", "environment", "stop"]

ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.EMFILE, errno.ENFILE,
                      errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}


class SourceError(Exception):
    """The source's own fault, in words written for people (error rows keep the message as it is)."""


class JobStopped(Exception):
    """The environment failed in a way that would fail every further source; the message says what and where."""


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
    return fault

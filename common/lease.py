"""One driver per output: ``OUTPUT/lease.json`` names the driver that holds the output and when it last renewed.

A second driver on the same output is refused with a message naming the holder. A holder that is gone can be
taken over: at once when it ran on this host and its process no longer exists (a killed driver's rerun), else
once it has not renewed for ``ttl_s``. Storage has no compare-and-swap, so taking the lease is write, wait, read
back (two drivers starting together: the last writer wins, the other sees it and stops), and the holder reads it
back before every commit (a driver whose lease was taken over stops before it writes anything more). Where workers
commit, each checks the driver's lease the same way: ``Lease(storage, output, holder=driver_lease.holder)``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from common.storage import Storage

LEASE_FILE = "lease.json"


class LeaseHeld(Exception):
    """Another driver holds the output (or took it over from this one)."""


class Lease:
    def __init__(self, storage: Storage, output: str, ttl_s: float = 120.0, settle_s: float = 1.0,
                 holder: str | None = None):
        """``holder``: the id of the driver this process commits for (a worker), which only ``check``s."""
        self.storage, self.uri = storage, storage.join(output.rstrip("/"), LEASE_FILE)
        self.ttl_s, self.settle_s = ttl_s, settle_s
        self.me = {"id": holder or uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def holder(self) -> str:
        return self.me["id"]

    def _read(self) -> dict | None:
        try:
            return json.loads(self.storage.read_bytes(self.uri))
        except FileNotFoundError:
            return None
        except ValueError:  # a lease cut off while written: nobody holds it
            return None

    def _write(self) -> None:
        self.storage.write_atomic(self.uri, json.dumps({**self.me, "renewed_at": time.time()}).encode())

    def _gone(self, holder: dict) -> bool:
        if time.time() - float(holder.get("renewed_at", 0)) > self.ttl_s:
            return True
        if holder.get("host") != self.me["host"]:
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError):
            return False
        return False

    def _describe(self, holder: dict) -> str:
        age = time.time() - float(holder.get("renewed_at", 0))
        return (f"output {self.uri.rsplit('/', 1)[0]} is in use by another driver (pid {holder.get('pid')} on "
                f"{holder.get('host')}, renewed {age:.0f} s ago); run one driver per output. If that driver is gone, "
                f"its lease expires {max(0.0, self.ttl_s - age):.0f} s from now, or delete {self.uri}")

    def acquire(self) -> None:
        self.claim()
        self.confirm()

    def claim(self) -> None:
        """Write the lease, unless a live driver holds it (LeaseHeld); it is ours once ``confirm`` says so. What the
        driver does in between (starting Ray) counts towards the settle time, so it must write nothing there."""
        holder = self._read()
        if holder is not None and holder.get("id") != self.me["id"] and not self._gone(holder):
            raise LeaseHeld(self._describe(holder))
        self._write()
        self._claimed = time.monotonic()

    def confirm(self) -> None:
        """Read the lease back once the settle time since ``claim`` has passed (a driver that wrote at the same moment
        has written by now: the last writer holds it), then keep it renewed."""
        time.sleep(max(0.0, self._claimed + self.settle_s - time.monotonic()))
        self.check()
        self._renewer = threading.Thread(target=self._renew_loop, daemon=True)
        self._renewer.start()

    def check(self) -> None:
        """Still ours? Called before every commit."""
        holder = self._read()
        if holder is None or holder.get("id") != self.me["id"]:
            raise LeaseHeld(self._describe(holder) if holder else f"the lease {self.uri} was removed while this driver ran")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.check()
                self._write()
            except Exception:  # noqa: BLE001 - the next commit's check() says what went wrong
                return

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        holder = self._read()
        if holder is not None and holder.get("id") == self.me["id"]:
            self.storage.remove(self.uri)

"""A running Ray cluster on loopback addresses (`ray start`), for the tests and benchmarks that need one a job joins
rather than one it starts: its nodes share a temp dir of its own, and it is torn down by killing exactly its own
processes (`ray stop` would stop every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

from jobs.loopback_s3 import free_port


def _ray_start(env: dict, *args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", "--disable-usage-stats", *args],
                         env=env, capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out.stdout}{out.stderr}")


@contextmanager
def loopback_ray_cluster(head_ip: str, head: list[str], workers: list[tuple[str, list[str]]] = (),
                         env: dict | None = None) -> Iterator[str]:
    """A head node on ``head_ip`` started with the `ray start` options ``head`` (its CPUs, dashboard), then a node
    per ``workers`` entry (its address, its options), all with ``env`` (else this process's environment); yields
    the head's address, ip:port."""
    import psutil

    # The flag that keeps a Ray node on loopback is for a driver's side (its node address) only: `ray start` is
    # given its address, and with the flag set it refuses to start a cluster that others may join.
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    port = free_port()
    address = f"{head_ip}:{port}"
    # Short (socket paths have a length limit), and its own, so that no later ray.init() here takes it for the
    # machine's current cluster.
    temp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    try:
        _ray_start(env, "--head", f"--temp-dir={temp}", f"--node-ip-address={head_ip}",
                   f"--port={port}", *head)
        for ip, args in workers:
            _ray_start(env, f"--address={address}", f"--node-ip-address={ip}", *args)
        yield address
    finally:
        # Its processes name its temp dir or its head's port (the Ray client server too, which no node parents,
        # which may name the machine's address instead of head_ip, and which, left running, holds its port against
        # the next cluster's head); their children are its workers, whose names say neither.
        procs = set()
        for p in psutil.process_iter(["cmdline"]):
            if any(temp in a or a.endswith(f":{port}") for a in p.info["cmdline"] or []):
                try:
                    procs.update([p, *p.children(recursive=True)])
                except psutil.NoSuchProcess:
                    pass
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(temp, ignore_errors=True)

"""The drivers' Ray session (curation, feature precompute): a new local cluster bound to loopback, or the cluster
at ``address``; Ray Data's own progress bars and per-dataset lines off, since the drivers print their own.

A process that already holds a Ray session (a notebook, a test suite) keeps it: the driver runs on it and leaves
it running.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's notice that the local cluster uses token authentication, its default (the job needs nothing from it).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    owned = not ray.is_initialized()
    if owned and address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind the local cluster to 127.0.0.1
        # "local": a new cluster of this process, never one a `ray start` on this machine happens to run. With no
        # dashboard its metrics have no reader: collecting them cost its processes 8-12% of their CPU.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, _system_config={"enable_metrics_collection": False})
    elif owned:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        ctx = ray.data.DataContext.get_current()
        # Ray Data's INFO lines and its hint about the progress bars the drivers replace (after the first use of
        # ray.data: importing it sets up its loggers).
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        yield
    finally:
        if owned:
            ray.shutdown()

"""Run under torchrun: ``python -m tests.train_jobs_worker JOBS_JSON``, a JSON list of [port, `python -m training`
arguments] pairs, run one after the other by the same ranks. One launch's start-up and imports (about 10 s a rank on
CPU) then serve several runs; each run still sets up its own process group, model, data and output folder.

Each run's process group meets at a store of its own on its port, hosted by rank 0: made again at torchrun's store,
it would find the keys of the group before it there and could join that group's dead peers. The first run that
fails ends the launch with its exit code."""

from __future__ import annotations

import json
import os
import sys

from training.__main__ import main

if __name__ == "__main__":
    for port, argv in json.loads(sys.argv[1]):
        os.environ.update(MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="False")
        code = main(argv)
        if code:
            sys.exit(code)

"""What each run leaves beside the data, so a dataset says how it was made: ``runs/<start>-<id>/config.yaml`` (the
resolved config, every default filled in) and ``stats.json`` (totals, per stage, per source)."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import yaml

from common import contract as C
from common.storage import Storage
from common.typed_config import to_dict

from curation.config import JobConfig
from curation.sink.writer import RunStats

RUNS_DIR = "runs"


def run_stats(stats: RunStats, stage_counts: dict, seconds: float, sources_total: int, sources_skipped: int) -> dict:
    return {
        "pipeline_version": C.PIPELINE_VERSION,
        "seconds": round(seconds, 3),
        "sources": {"found": sources_total, "skipped": sources_skipped, "done": stats.sources_done,
                    "failed": stats.sources_failed, "duplicate": stats.sources_duplicate,
                    # Their bytes, and the bytes the scene pass and the encode stage read from storage for them:
                    # read / bytes is 1.0 when each byte is read once (curation.video.source_file).
                    "bytes": stats.source_bytes, "bytes_read": stats.source_bytes_read},
        "clips": {"written": stats.clips_written, "already_present": stats.clips_duplicate,
                  "dropped": dict(Counter(stats.dropped)), "seconds": round(stats.clip_seconds, 3)},
        "shards": {"written": stats.shards_written, "bytes": stats.bytes_written,
                   "bytes_to_driver": stats.bytes_to_driver},
        "errors": dict(Counter(stats.errors)),
        "environment_faults": stats.environment,
        "job_faults": stats.job_faults,
        # Rows in, rows out, rows that became errors, and the seconds the stage's workers were busy, summed.
        "stages": {name: {"in": int(c[0]), "out": int(c[1]), "errors": int(c[2]), "busy_s": round(c[3], 3)}
                   for name, c in stage_counts.items()},
        "per_source": stats.sources,
    }


def write_run_record(storage: Storage, output: str, cfg: JobConfig, stats: dict, started: float) -> str:
    run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + uuid.uuid4().hex[:6]
    base = storage.join(output.rstrip("/"), RUNS_DIR, run)
    storage.write_atomic(storage.join(base, "config.yaml"), yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    storage.write_atomic(storage.join(base, "stats.json"), json.dumps(stats, indent=1).encode())
    return base

"""A run's progress: per-stage counters that every worker reports to, and the line the driver prints from them.

Light on purpose: the counters live in an actor of their own, whose process imports this module and nothing of the
pipeline (with the runner's imports that process took 0.2 CPU-seconds and 50 MiB more)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from curation.sink.writer import RunStats


class Progress:
    """Per-stage counters (items in, out, errors, busy seconds), kept by a tiny actor every worker reports to."""

    def __init__(self):
        self.counts: dict[str, list[float]] = {}

    def add(self, stage: str, rows_in: int, rows_out: int, errors: int, seconds: float) -> None:
        c = self.counts.setdefault(stage, [0, 0, 0, 0.0])
        for i, v in enumerate((rows_in, rows_out, errors, seconds)):
            c[i] += v

    def snapshot(self) -> dict[str, list[float]]:
        return self.counts


def progress_line(elapsed: float, total: int, stats: RunStats, counts: dict, stages: list[str]) -> str:
    """One line of progress: sources done of total with rate and ETA, clips, errors, then rows per stage in
    pipeline order (busy seconds show where the time goes)."""
    done = stats.sources_done + stats.sources_failed
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
    dropped = sum(stats.dropped.values())
    parts = [f"sources {done}/{total} ({rate:.2f}/s, ETA {eta})",
             f"clips {stats.clips_written} written, {dropped} dropped", f"errors {sum(stats.errors.values())}"]
    parts += [f"{name} {int(counts[name][0])}" for name in stages if name in counts]
    return f"[{elapsed:6.0f}s] " + " | ".join(parts)

"""A run's progress: per-stage counters, and the line the driver prints from them.

The counters travel with the rows: each chain adds up what its stages report and hands the sums on as a
``progress`` row with every block it sends on (the next chains pass it through untouched), and the driver adds up
the ones that reach it. No process of their own: an actor for them took a worker process at the job's start, ahead
of the task workers (a node starts two at a time), and about 10 ms of CPU a second while the job ran."""

from __future__ import annotations

from typing import TYPE_CHECKING

from curation.pipeline.row import Row

if TYPE_CHECKING:
    from curation.sink.writer import RunStats


class StageCounts:
    """Per stage: items in, items out, errors, busy seconds."""

    def __init__(self):
        self.counts: dict[str, list[float]] = {}

    def add(self, stage: str, rows_in: int, rows_out: int, errors: int, seconds: float) -> None:
        c = self.counts.setdefault(stage, [0, 0, 0, 0.0])
        for i, v in enumerate((rows_in, rows_out, errors, seconds)):
            c[i] += v

    def take(self) -> Row | None:
        """The counts so far as a ``progress`` row (None when nothing was counted), starting again from zero."""
        if not self.counts:
            return None
        row, self.counts = Row("progress", "", {"counts": self.counts}), {}
        return row

    def merge(self, row: Row) -> None:
        for stage, c in row.meta["counts"].items():
            self.add(stage, *c)


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

"""What a run tells its user: the progress line, and an exit code that says whether the job did its work."""

from collections import Counter

from curation.__main__ import _verdict
from curation.runner import RunResult, progress_line
from curation.writer import RunStats


def stats(**kw) -> RunStats:
    s = RunStats()
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_progress_says_sources_done_of_total_rate_eta_and_stages_in_pipeline_order():
    s = stats(sources_done=2, sources_failed=1, clips_written=14, dropped=Counter(motion=2, blank=1), errors=Counter(VideoError=1))
    counts = {"encode": [5, 5, 0, 1.0], "probe": [4, 4, 0, 0.1], "scenes": [3, 9, 1, 5.0]}
    line = progress_line(30.0, 10, s, counts, ["probe", "scenes", "filter", "encode"])
    assert line == "[    30s] sources 3/10 (0.10/s, ETA 70s) | clips 14 written, 3 dropped | errors 1 | probe 4 | scenes 3 | encode 5"
    assert "ETA ?" in progress_line(2.0, 10, RunStats(), {}, ["probe"])  # the first line, before anything is done


def result(s: RunStats) -> RunResult:
    return RunResult(10, 0, s, 1.0, {})


def test_a_job_that_wrote_nothing_or_failed_too_often_exits_non_zero():
    ok = {"a": {"status": "ok"}, "b": {"status": "ok"}, "c": {"status": "error"}}
    assert _verdict(result(stats(sources_done=2, sources_failed=1, clips_written=5, sources=ok)), 0.5) == 0
    assert _verdict(result(stats(sources_done=2, sources_failed=1, clips_written=5, sources=ok)), 0.2) == 1
    assert _verdict(result(stats(sources_done=3, sources=dict(ok, c={"status": "ok"}))), 0.5) == 1  # no clip written
    assert _verdict(result(stats(sources_done=2, clips_written=5, environment=["probe on x: refused"])), 0.5) == 3

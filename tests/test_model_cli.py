"""`python -m cinema_model` commands: summary, and generate's files and seeding."""

import av
import numpy as np
from PIL import Image

from cinema_model.__main__ import main
from tests.model_fixtures import tiny_checkpoints


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def test_summary_full_prints_counts_per_part(capsys):
    main(["summary", "full"])
    out = capsys.readouterr().out
    for part in ("mllm", "t5", "vae", "aligner", "dit"):
        assert part in out
    assert "5,570,283,072" in out  # the CogVideoX-5B transformer layout


def test_generate_writes_mp4_and_contact_sheet_deterministically(tmp_path):
    rng = np.random.default_rng(0)
    subjects = []
    for i, size in enumerate([(50, 40), (30, 60)]):
        subjects.append(tmp_path / f"s{i}.png")
        Image.fromarray(rng.integers(0, 255, (*size, 4), dtype=np.uint8)).save(subjects[-1])
    args = ["generate", "--preset", "tiny", "--checkpoints", tiny_checkpoints(), "--prompt", "a dog runs on a beach", "--steps", "2"]
    args += [a for s in subjects for a in ("--subject", str(s))]
    main(args + ["--seed", "3", "--out", str(tmp_path / "a.mp4")])
    main(args + ["--seed", "3", "--out", str(tmp_path / "b.mp4")])
    main(args + ["--seed", "4", "--out", str(tmp_path / "c.mp4")])

    # Sampling is deterministic: the contact sheets, written from the sampled frames, are byte-equal per seed.
    sheets = {n: (tmp_path / f"{n}.png").read_bytes() for n in "abc"}
    assert sheets["a"] == sheets["b"] and sheets["a"] != sheets["c"]
    sheet = Image.open(tmp_path / "a.png")
    assert sheet.format == "PNG" and sheet.size == (32 * 5, 32 * 2)  # 2 subjects left, 4 frames right

    # The mp4 holds the sampled video. H.264 at its default quality is lossy on these noise-like 32x32 frames (mean
    # error about 17 levels) and its bytes have varied between runs in one process, so the frames are compared to
    # the sheets' tiles relatively: far nearer their own seed's than the other seed's (about 49 levels away).
    a = _frames(tmp_path / "a.mp4").astype(np.int16)
    assert a.shape == (9, 32, 32, 3)
    picks = np.linspace(0, len(a) - 1, 4).round().astype(int)

    def tiles(name):
        row = np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"))[:32].astype(np.int16)
        return np.stack([row[:, 32 * (i + 1):32 * (i + 2)] for i in range(4)])

    assert np.abs(a[picks] - tiles("a")).mean() < 0.6 * np.abs(a[picks] - tiles("c")).mean()

"""python -m curation stats / validate / show on a small dataset written by curation's own writer."""

import io
import json
import shutil
import tarfile

import pytest
from PIL import Image

from curation.__main__ import main

from .data_fixtures import standard_clips, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "ds"
    write_dataset(out, standard_clips(), clips_per_shard=5)
    return out


def test_stats_counts_clips_sources_and_subjects(dataset, capsys):
    assert main(["stats", str(dataset), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["clips"] == 12 and s["shards"] == 3 and s["captioned"] == 12
    assert s["hours"] == pytest.approx((11 * 5 + 2) / 8 / 3600, abs=1e-6)
    assert s["subjects_per_clip"] == {"0": 4, "1": 3, "2": 3, "3": 2}
    assert s["sources"]["done"] == 12 and s["per_source"]["/videos/short.mp4"]["clips"] == 1
    assert s["scores"]["motion"]["median"] == 1.0 and s["scores"]["aesthetic"] is None
    # Clips of 5 and 2 frames hold no window of the default trainer (17 frames at 8 fps): a counted reason.
    assert s["training_window"] == {"fps": 8.0, "frames": {}, "too_short": 12}
    assert main(["stats", str(dataset)]) == 0
    text = capsys.readouterr().out
    assert "clips: 12 in 3 shard(s)" in text and "subjects per clip: 0: 4, 1: 3, 2: 3, 3: 2" in text
    assert "training window (frames at 8.0 fps, clips): -; too_short: 12 (the default trainer skips them)" in text


def _rewrite(shard, keep=lambda name: True, extra: dict[str, bytes] = {}):
    with tarfile.open(shard) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers() if keep(m.name)]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in [*((m.name, d) for m, d in members), *extra.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


PLANTS = {  # planted in the shard that holds clip-01; {shard} is its file name
    "missing member": (lambda s: _rewrite(s, keep=lambda n: n != "clip-01.subject_0.png"),
                       "clip clip-01: missing from {shard}: subject_0.png"),
    "orphan member": (lambda s: _rewrite(s, extra={"stray-9.mp4": b"x"}),
                      "{shard}: member(s) with no manifest row: stray-9.mp4"),
    "tar cut inside a member": (lambda s: s.write_bytes(s.read_bytes()[:1000]), "{shard}: not a readable tar"),
    "tar cut between members": (lambda s: s.write_bytes(s.read_bytes()[: s.stat().st_size // 2]),
                                "{shard}: not a readable tar"),
    "unsafe key": (lambda s: _rewrite(s, extra={"../x.mp4": b"x"}), "unsafe or unknown member '../x.mp4'"),
}


def test_validate_passes_a_good_dataset(dataset, capsys):
    assert main(["validate", str(dataset)]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("plant", PLANTS)
def test_validate_lists_a_planted_problem(dataset, tmp_path, capsys, plant):
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    make, message = PLANTS[plant]
    shard = next(p for p in (bad / "shards").iterdir() if "clip-01.mp4" in tarfile.open(p).getnames())
    make(shard)
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert message.format(shard=shard.name) in out, out
    assert not (tmp_path / "x.mp4").exists()  # member bytes are read, never extracted


def test_show_draws_frames_crops_on_a_checkerboard_and_metadata(dataset, tmp_path, capsys):
    png = tmp_path / "clip.png"
    assert main(["show", str(dataset), "clip-03", "--out", str(png)]) == 0
    image = Image.open(png).convert("RGB")
    assert image.width >= 900 and image.height > 2 * 160 + 20 * 18
    # The crops row starts below the 160 px frames: a crop's transparent corner shows the checkerboard's grey.
    assert image.getpixel((1, 181)) in ((204, 204, 204), (153, 153, 153))
    assert main(["show", str(dataset), "nope"]) == 2
    assert "clip 'nope' is not in the manifest" in capsys.readouterr().err

"""End-to-end curation on Ray over the real videos plus broken inputs."""

import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import ray
import webdataset as wds
import yaml

from common import contract as C
from curation.dedup import signals as S
from curation.run.runner import run
from curation.stages import pipeline

from .conftest import BAD, GOOD, VIDEOS
from .pipeline_helpers import check_contract, errors, manifest


def test_every_source_is_accounted_for(curated):
    cfg, result, inputs = curated
    s = result.stats
    assert result.sources_total == len(inputs) == 12
    assert s.sources_done + s.sources_failed == 12
    errs = errors(cfg.output).to_pylist()
    by_name = {e["uri"].rsplit("/", 1)[-1]: e for e in errs}
    assert sorted(by_name) == sorted(BAD), errs
    assert all(e["stage"] == "scenes" and e["clip_id"] is None for e in errs)
    assert "file not found" in by_name["missing.mp4"]["message"]
    assert "not a readable video" in by_name["random.mp4"]["message"]
    assert "8704x4352 is above the limit" in by_name["huge.mp4"]["message"]
    assert all(e["message"] and len(e["message"]) < 300 for e in errs)


def test_each_run_records_its_resolved_config_and_stats(curated):
    cfg, result, inputs = curated
    record = Path(result.record)
    assert record.parent == Path(cfg.output) / "runs"
    resolved = yaml.safe_load((record / "config.yaml").read_text())
    assert resolved["scenes"]["min_clip_s"] == 0.5 and resolved["encode"]["preset"] == cfg.encode.preset  # defaults too
    stats = json.loads((record / "stats.json").read_text())
    assert stats["sources"]["found"] == 12 and stats["clips"]["written"] == result.stats.clips_written > 0
    assert list(stats["stages"])[:2] == ["scenes", "encode"] and stats["stages"]["scenes"]["busy_s"] > 0
    # Each byte of every source read once, the SHA-1 made of the bytes the scene pass decoded (the clips not held
    # in that pass are read again by the encode stage, not counted here).
    sizes = sum(p.stat().st_size for p in inputs if p.name not in BAD)
    assert stats["sources"]["bytes"] == stats["sources"]["bytes_read"] == sizes
    per_source = stats["per_source"]
    assert len(per_source) == 12 and sum(m["written"] for m in per_source.values()) == stats["clips"]["written"]
    assert {m["status"] for u, m in per_source.items() if u.rsplit("/", 1)[-1] in BAD} == {"error"}


def test_output_meets_the_dataset_contract(curated):
    cfg, result, _ = curated
    rows = check_contract(cfg.output)
    sources = {r["source_uri"].rsplit("/", 1)[-1] for r in rows.values()}
    # fades.mp4 and delayed_start.mp4 hold no content, only flat frames fading: no clip of them is kept.
    assert sources == set(GOOD) - {"fades.mp4", "delayed_start.mp4"} | {"bikes.mp4"}
    assert len(rows) == result.stats.clips_written
    assert result.stats.shards_written >= 2  # 1 MB target: several shards
    rotated = [r for r in rows.values() if r["source_uri"].endswith("issue-134-rotate.mp4")]
    assert rotated and all((r["width"], r["height"]) == (544, 1280) for r in rotated)
    for r in rows.values():
        assert r["end_frame"] - r["start_frame"] == r["num_frames"] and r["motion"] is not None
        assert len(r["source_sha1"]) == 40 and r["pipeline_version"] == C.PIPELINE_VERSION
    # the near-duplicate signals: frame hashes from the scene pass, the aesthetic stage's CLIP embedding
    assert len(S.fingerprint_array([r["fingerprint"] for r in rows.values()])) == len(rows)
    embeddings = S.embedding_array([r["embedding"] for r in rows.values()])
    assert embeddings.shape[1] > 1 and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-3)


def test_shards_are_readable_by_tar_webdataset_and_ray(curated):
    cfg, _, _ = curated
    shard_dir = Path(cfg.output) / C.SHARDS_DIR
    shards = sorted(shard_dir.glob("*.tar"))
    listing = subprocess.run(["tar", "-tf", str(shards[0])], capture_output=True, text=True, check=True).stdout.split()
    assert listing and all(n.endswith((".mp4", ".json", ".caption.txt", ".png")) for n in listing)
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
    assert len(samples) == manifest(cfg.output).num_rows
    assert all({"mp4", "json", "caption.txt"} <= set(s) for s in samples)
    assert ray.data.read_webdataset(str(shard_dir), decoder=None).count() == len(samples)  # on the session's cluster
    with tarfile.open(shards[0]) as t:
        assert all(m.isfile() and "/" not in m.name and ".." not in m.name for m in t.getmembers())


def test_rerun_of_finished_job_is_a_noop(curated):
    cfg, _, _ = curated
    before = {p: p.stat().st_mtime_ns for p in Path(cfg.output).rglob("*") if p.is_file() and p.name != "report.html"}
    result = run(cfg)
    assert result.sources_skipped == result.sources_total == 12
    after = {p: p.stat().st_mtime_ns for p in Path(cfg.output).rglob("*") if p.is_file() and p.name != "report.html"}
    assert before == after


@pytest.mark.parametrize("setting, message", [
    ("caption.num_gpus=1", r"caption.*need 1 GPU.*has 0.*caption.num_gpus=0"),
    ("scenes.num_gpus=0.25", r"scenes need 0.25 GPU.*has 0.*scenes.num_gpus=0"),  # TransNetV2 on a GPU share
])
def test_gpu_stages_on_a_cluster_without_gpus_are_a_clear_error(tiny_paths, tmp_path, setting, message, ray_local):
    from common.typed_config import ConfigError
    from curation.config import load_job
    from tiny_models.curation_models import tiny_overrides

    cfg = load_job(None, [*tiny_overrides(tiny_paths), setting, "ray.num_cpus=1"],
                   input=str(VIDEOS / "counter.mp4"), output=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=message):
        run(cfg)  # instead of waiting for ever for a GPU


def test_clips_carry_captions_and_subject_crops(curated):
    import io
    import json as _json

    from PIL import Image

    from tiny_models.curation_models import FIXED_ANSWER

    cfg, _, _ = curated
    rows = manifest(cfg.output).to_pylist()
    assert rows and all(r["caption"] == _json.loads(FIXED_ANSWER)["caption"] for r in rows)
    assert sum(len(r["subjects"]) for r in rows) > 0
    by_key = {r["clip_id"]: r for r in rows}
    crops = refs = 0
    for shard in sorted((Path(cfg.output) / C.SHARDS_DIR).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, member = m.name.split(".", 1)
                if not member.startswith("subject_"):
                    continue
                image = Image.open(io.BytesIO(tar.extractfile(m).read()))
                k, _, ref = member.removeprefix("subject_").removesuffix(".png").partition("_ref")
                k = int(k)
                assert k < len(by_key[key]["subjects"]) <= C.MAX_SUBJECTS
                if ref:  # a reference from another frame: its box is the track's at that frame
                    r = by_key[key]["subject_tracks"][k]["references"][int(ref)]
                    assert r["member"] == member
                    x0, y0, x1, y1 = next(p["bbox"] for p in by_key[key]["subject_tracks"][k]["track"]
                                          if p["frame"] == r["frame"])
                    refs += 1
                else:
                    x0, y0, x1, y1 = by_key[key]["subjects"][k]["bbox"]
                    crops += 1
                assert image.mode == "RGBA" and image.size == (round(x1 - x0), round(y1 - y0))
    assert crops == sum(len(r["subjects"]) for r in rows)
    assert refs == sum(len(t["references"]) for r in rows for t in r["subject_tracks"]) > 0


def test_each_stage_s_counts_reach_the_driver_through_the_later_chains(curated):
    # The counts travel as progress rows, through the GPU chain and the shard sink: none lost, none counted twice.
    cfg, result, inputs = curated
    assert list(result.stage_counts) == [s.name for s in pipeline(cfg)]
    assert result.stage_counts["scenes"][0] == len(inputs)  # every source, the broken ones too, once


def test_every_clip_is_scored_for_burned_in_text_on_ray(curated):
    # The text stage ran in the CPU workers (PP-OCRv4's real detector); the job keeps every clip
    # (filters.max_text_area=null) with its scores. testvideo.mp4 carries a burned-in copyright line on every frame,
    # counter.mp4 its frame number; bikes.mp4 shows no text on its first shot's frames.
    cfg, result, _ = curated
    assert result.stage_counts["text"][0] > 0 and result.stage_counts["text"][2] == 0  # clips in, no errors
    rows = manifest(cfg.output).to_pylist()
    assert all(r["text_area"] is not None and 0 <= r["text_frames"] <= cfg.text.num_frames for r in rows)
    by_name = {}
    for r in rows:
        by_name.setdefault(r["source_uri"].rsplit("/", 1)[-1], []).append(r)
    assert min(r["text_area"] for r in by_name["testvideo.mp4"] + by_name["counter.mp4"]) > 0.02
    assert min(r["text_area"] for r in by_name["bikes.mp4"]) == 0

"""The capacity plan on small synthetic bench files: hand-computed arithmetic, the bottleneck, missing files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.__main__ import main
from curation.config import load_job
from curation.tools.capacity import Cluster, PlanError, load_bench, make_plan

# 100 clips from 500 s of video on 4 cores. Busy CPU-s per clip: scenes 0.6, filter 0, encode 1.4;
# (70 - 10) s x 4 cores = 240 core-s against 200 busy: 0.4 s/clip of overhead. 5 MB of shards per clip.
CURATION = {"clips": 100, "video_seconds": 500.0, "cores": 4, "ours_s": 70.0, "ray_start_s": 10.0,
            "bytes_written": 500_000_000, "stage_busy_s": {"scenes": 60.0, "encode": 140.0}}
# Caption prep 0.5 CPU-s/clip; aesthetic 0.05 GPU-s/clip at batch 32 (0.025 at batch 128); caption 2 GPU-s/clip at
# batch 8 (1 at batch 32); subjects 0.25 GPU-s/clip.
GPU_STAGES = {"mode": "gpu, real-size models, random weights", "device": "H100",
              "stages": {"caption_prep": {"clips_per_s": 2.0}, "aesthetic_batch_32": {"clips_per_s": 20.0},
                         "aesthetic_batch_128": {"clips_per_s": 40.0}, "caption_batch_8": {"clips_per_s": 0.5},
                         "caption_batch_32": {"clips_per_s": 1.0}, "subjects": {"clips_per_s": 4.0}},
              # caption_vllm: the vLLM engine (jobs/gpu_cluster_curation.yaml's), here as fast as batches of 32
              "clips_per_s_per_gpu": {"aesthetic": 40.0, "caption": 1.0, "subjects": 4.0, "caption_vllm": 1.0},
              "subjects_track_frames": 5}  # the frames per clip the subjects stage detected on (the default)
CPU_STAGES = {"mode": "cpu, tiny models", "stages": {"caption_prep": {"clips_per_s": 2.0},
                                                     "aesthetic": {"clips_per_s": 9.0}, "caption": {"clips_per_s": 3.0},
                                                     "subjects": {"clips_per_s": 3.0}}}


def bench_dir(tmp_path: Path, curation: dict | None = CURATION, model: dict | None = GPU_STAGES) -> Path:
    for name, data in (("curation.json", curation), ("model_stages.json", model)):
        if data is not None:
            (tmp_path / name).write_text(json.dumps(data))
    return tmp_path


def job(*overrides: str):
    # The text stage off: these bench files predate it (a job with it needs stage_busy_s.text).
    return load_job(None, ["encode.max_short_side=720", "text.enabled=false", *overrides], input="-", output="-")


def plan(tmp_path: Path, cluster: Cluster = Cluster(), clips: int = 720_000, hours: float = 10.0, **files):
    cfg = job()
    return make_plan(load_bench(bench_dir(tmp_path, **files), cfg), cfg, clips, hours, cluster)


def test_hand_computed_plan(tmp_path):
    p = plan(tmp_path)
    per_clip = {s.stage: s.seconds_per_clip for s in p.stages}
    assert per_clip == pytest.approx({"scenes": 0.6, "encode": 1.4, "cpu overhead": 0.4,
                                      "caption_prep": 0.5, "aesthetic": 0.05, "caption": 2.0, "subjects": 0.25})
    # 720k clips x 2.9 CPU-s = 580 CPU-h -> 58 CPUs for 10 h; x 2.3 GPU-s = 460 GPU-h -> 46 GPUs.
    pools = {q.pool: q for q in p.pools}
    assert pools["cpu"].hours == pytest.approx(580) and pools["cpu"].units_for_target == 58
    assert pools["gpu"].hours == pytest.approx(460) and pools["gpu"].units_for_target == 46
    # 46 GPUs need 6 nodes of 8; on 48 GPUs 9.58 h, on 576 CPUs about 1 h: the GPUs (captioning) bound it.
    assert p.nodes == 6 and p.wall_hours == pytest.approx(460 / 48) and p.wall_hours <= 10
    assert pools["cpu"].wall_hours == pytest.approx(580 / 576)
    assert (p.bottleneck_pool, p.bottleneck_stage) == ("gpu", "caption")
    assert p.video_hours == pytest.approx(720_000 * 5 / 3600)
    assert p.shard_bytes == pytest.approx(720_000 * 5e6)
    # Row: 300 + 256 tokens x 4 + 6 subjects x (64 + 10 B x half of a 1280-wide clip + 5 track points x 48 +
    # 2 references x 48 + a 768-d float16 embedding in base64).
    assert p.manifest_bytes == pytest.approx(720_000 * (300 + 1024 + 6 * (64 + 6400 + 240 + 96 + 2048)))


def test_subject_cost_scales_with_the_frames_tracked(tmp_path):
    cfg = job("subjects.track_frames=10")
    p = make_plan(load_bench(bench_dir(tmp_path), cfg), cfg, 720_000, 10.0, Cluster())
    line = next(s for s in p.stages if s.stage == "subjects")
    assert line.seconds_per_clip == pytest.approx(0.5) and "x 5/10 frames per clip" in line.source
    # A bench from before tracking measured one keyframe per clip: the default's five cost five times that.
    old = {k: v for k, v in GPU_STAGES.items() if k != "subjects_track_frames"}
    cfg = job()
    p = make_plan(load_bench(bench_dir(tmp_path, model=old), cfg), cfg, 720_000, 10.0, Cluster())
    assert next(s for s in p.stages if s.stage == "subjects").seconds_per_clip == pytest.approx(1.25)
    assert any("without subject crops" in n for n in p.notes)


@pytest.mark.parametrize("stage, benchmarked, seconds", [("caption", 32, 1.0), ("aesthetic", 128, 0.025)])
def test_batch_size_picks_its_measured_rate(tmp_path, stage, benchmarked, seconds):
    cfg = job(f"{stage}.batch_size={benchmarked}")
    p = make_plan(load_bench(bench_dir(tmp_path), cfg), cfg, 720_000, 10.0, Cluster())
    assert {s.stage: s.seconds_per_clip for s in p.stages}[stage] == pytest.approx(seconds)
    assert not any("batch_size" in n for n in p.notes)
    cfg = job(f"{stage}.batch_size=16")  # not benchmarked: the best measured rate (here the larger batch), in a note
    p = make_plan(load_bench(bench_dir(tmp_path), cfg), cfg, 720_000, 10.0, Cluster())
    assert {s.stage: s.seconds_per_clip for s in p.stages}[stage] == pytest.approx(seconds)
    assert any(f"{stage}.batch_size=16 was not benchmarked" in n for n in p.notes)


def test_bottleneck_follows_the_cluster_shape(tmp_path):
    # One node of 8 CPUs + 8 GPUs: 580/8 = 72.5 h of CPU work against 460/8 = 57.5 h of GPU work.
    p = plan(tmp_path, Cluster(cpus_per_node=8, gpus_per_node=8, nodes=1))
    assert (p.bottleneck_pool, p.bottleneck_stage) == ("cpu", "encode")
    assert p.nodes == 1 and p.wall_hours == pytest.approx(72.5)
    p = plan(tmp_path, Cluster(cpus_per_node=16, gpus_per_node=8, nodes=1))
    assert (p.bottleneck_pool, p.bottleneck_stage, p.wall_hours) == ("gpu", "caption", pytest.approx(57.5))
    with pytest.raises(PlanError, match="--nodes must be >= 1"):
        plan(tmp_path, Cluster(nodes=0))
    with pytest.raises(PlanError, match="no GPUs"):
        plan(tmp_path, Cluster(gpus_per_node=0))


def test_cpu_only_model_bench_leaves_gpu_stages_unmeasured(tmp_path):
    p = plan(tmp_path, model=CPU_STAGES)
    assert [q.pool for q in p.pools] == ["cpu"] and p.unmeasured == ["aesthetic", "caption", "subjects"]
    assert p.bottleneck_pool == "cpu" and p.nodes == 1
    assert any("model_stages_bench --gpu" in n for n in p.notes)


def test_no_model_stages_need_no_model_bench(tmp_path):
    cfg = job("caption.enabled=false", "aesthetic.enabled=false")
    bench = load_bench(bench_dir(tmp_path, model=None), cfg)
    assert [r.stage for r in bench.rates] == ["scenes", "encode", "cpu overhead"]


def test_aesthetic_without_captions_costs_its_prep_and_its_gpu_time(tmp_path):
    cfg = job("caption.enabled=false")
    bench = load_bench(bench_dir(tmp_path), cfg)
    assert [(r.stage, r.pool, r.seconds_per_clip) for r in bench.rates[-2:]] == [
        ("caption_prep", "cpu", 0.5), ("aesthetic", "gpu", pytest.approx(0.05))]
    assert not bench.unmeasured


def test_gpu_bench_from_before_the_aesthetic_stage_leaves_it_unmeasured(tmp_path):
    old = {**GPU_STAGES, "stages": {k: v for k, v in GPU_STAGES["stages"].items() if not k.startswith("aesthetic")},
           "clips_per_s_per_gpu": {"caption": 1.0, "subjects": 4.0}}
    cfg = job()
    p = make_plan(load_bench(bench_dir(tmp_path, model=old), cfg), cfg, 720_000, 10.0, Cluster())
    assert p.unmeasured == ["aesthetic"] and {"caption", "subjects"} <= {s.stage for s in p.stages}
    assert any("aesthetic not measured" in n and "model_stages_bench --gpu" in n for n in p.notes)


def test_a_job_captioning_on_vllm_takes_the_engines_measured_rate(tmp_path):
    cfg = job("caption.engine=vllm")
    served = {**GPU_STAGES, "clips_per_s_per_gpu": {**GPU_STAGES["clips_per_s_per_gpu"], "caption_vllm": 4.0}}
    assert GPU_STAGES["clips_per_s_per_gpu"]["caption_vllm"] != 4.0
    rates = {r.stage: r for r in load_bench(bench_dir(tmp_path, model=served), cfg).rates}
    assert rates["caption"].seconds_per_clip == pytest.approx(0.25) and "caption_vllm" in rates["caption"].source
    # A bench file without the engine's run: the caption stage is unmeasured, not priced at the other engine's rate.
    older = {**GPU_STAGES, "clips_per_s_per_gpu": {"aesthetic": 40.0, "caption": 1.0, "subjects": 4.0}}
    bench = load_bench(bench_dir(tmp_path, model=older), cfg)
    assert bench.unmeasured == ["caption"] and "caption" not in {r.stage for r in bench.rates}
    assert any("caption on vLLM not measured" in n and "--gpu --vllm`" in n for n in bench.notes)


def test_the_scene_pass_costs_what_the_jobs_detectors_cost(tmp_path):
    # The bench's top level ran adaptive alone; its runs hold the default set (TransNetV2 + adaptive): 2 s/clip.
    slow = {**CURATION, "detectors": "adaptive", "runs": {"adaptive+transnetv2": {
        "ours_s": 120.0, "stage_busy_s": {**CURATION["stage_busy_s"], "scenes": 200.0}}}}
    folder = bench_dir(tmp_path, curation=slow)
    scenes = {j: next(r for r in load_bench(folder, job(*j)).rates if r.stage == "scenes") for j in
              [(), ("scenes.detectors=[{kind: adaptive}]",)]}
    assert scenes[()].seconds_per_clip == 2.0 and "detectors adaptive+transnetv2" in scenes[()].source
    assert scenes[("scenes.detectors=[{kind: adaptive}]",)].seconds_per_clip == 0.6
    # Kinds no run measured: the plan says its scene cost comes from other detectors.
    other = load_bench(folder, job("scenes.detectors=[{kind: threshold}]"))
    assert any("measured with detectors adaptive, not this job's threshold" in n for n in other.notes)


def test_missing_files_are_named_with_their_command(tmp_path):
    with pytest.raises(PlanError, match=r"curation\.json is missing: run `make bench`"):
        load_bench(tmp_path, job())
    with pytest.raises(PlanError, match=r"model_stages\.json is missing: run `python -m benchmarks\.model_stages_bench"):
        load_bench(bench_dir(tmp_path, model=None), job())
    old = {k: v for k, v in CURATION.items() if k != "stage_busy_s"}
    with pytest.raises(PlanError, match="has no 'stage_busy_s'"):
        load_bench(bench_dir(tmp_path, curation=old), job())


def test_plan_command(tmp_path, capsys):
    out = tmp_path / "plan.json"
    args = ["plan", "jobs/gpu_cluster_curation.yaml", "--clips", "720000", "--hours", "10", "--bench"]
    assert main([*args, str(bench_dir(tmp_path)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bottleneck: the GPU pool, mostly caption" in printed and "2 cores" not in printed
    assert "stage_busy_s.encode / clips (curation.json, 100 clips, detectors adaptive, 4 cores of this machine)" in printed
    saved = json.loads(out.read_text())
    assert saved["bottleneck_pool"] == "gpu" and saved["clips"] == 720_000
    assert main([*args, str(tmp_path / "none")]) == 2
    assert "none/curation.json is missing: run `make bench`" in capsys.readouterr().err

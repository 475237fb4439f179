"""Capacity plan for a curation job: CPU/GPU hours, cluster size, wall time and storage from measured throughputs.

Pure arithmetic over the JSON files the benchmarks write (no Ray, no models):

- ``curation.json`` (``make bench``): busy CPU-seconds per CPU stage, clips, video seconds, wall time, cores.
- ``model_stages.json`` (``python -m benchmarks.model_stages_bench [--gpu]``): caption prep clips/s (a CPU stage,
  model-free, the frames of every model stage) and, in ``--gpu`` mode, clips/s per GPU for aesthetic scoring,
  captioning and subjects.

The runner chains every CPU stage (scenes, encode, caption prep) in one task per source and every GPU stage on
GPU actors, all streaming at once: the job needs a CPU pool and a GPU pool, and the slower pool bounds it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from curation.config import JobConfig
from curation.stages import CPU_STAGES as _CPU_STAGE_CLASSES, enabled_cpu_stages

CPU_STAGES = tuple(s.name for s in _CPU_STAGE_CLASSES)
OVERHEAD = "cpu overhead"  # a line of the plan, never its bottleneck stage
# How to (re)write each file, as the messages show it.
CURATION_CMD = "`make bench`"
MODEL_CMD = "`python -m benchmarks.model_stages_bench` (CPU) or `... --gpu` (on a GPU machine)"
GPU_MODEL_CMD = "`python -m benchmarks.model_stages_bench --gpu` on a GPU machine"
GPU_VLLM_CMD = "`python -m benchmarks.model_stages_bench --gpu --vllm` on a GPU machine with vLLM in .venv-vllm"

# Manifest estimate (an upper bound: every caption at max_new_tokens, every clip with max_subjects subjects).
ROW_FIXED_BYTES = 300  # ids, uri, sha1, numbers, shard name
BYTES_PER_TOKEN = 4  # English text averages about 4 characters per token
SUBJECT_FIXED_BYTES = 64  # label, score, bbox, frame, area
TRACK_POINT_BYTES = 48  # frame, bbox, area, border_cut, sharpness, occluded, score
REFERENCE_BYTES = 48  # frame, member name, quality, in_window
EMBEDDING_BYTES_PER_DIM = 2 * 4 / 3  # float16, base64
EMBEDDING_DIM = 768  # CLIP ViT-L/14's projection
RLE_BYTES_PER_COLUMN = 10  # a compact mask: 2 runs per column it spans, ~5 characters per run
DEFAULT_SHORT_SIDE = 1080  # clip size when the job does not resize


class PlanError(Exception):
    """A bench file or value the plan needs is missing; the message names it and the command that writes it."""


@dataclass(frozen=True)
class Cluster:
    cpus_per_node: int = 96
    gpus_per_node: int = 8
    nodes: int | None = None  # None: size the cluster for the target hours


@dataclass(frozen=True)
class StageRate:
    stage: str
    pool: Literal["cpu", "gpu"]
    seconds_per_clip: float  # CPU-seconds or GPU-seconds
    source: str  # the measured numbers behind it


@dataclass
class Bench:
    clips: int
    video_seconds: float
    cores: int
    shard_bytes: int | None  # bytes_written by the bench run, when recorded
    rates: list[StageRate]
    unmeasured: list[str] = field(default_factory=list)  # stages the job runs that the bench files lack
    notes: list[str] = field(default_factory=list)


@dataclass
class StageLine:
    stage: str
    pool: str
    seconds_per_clip: float
    hours: float  # CPU-hours or GPU-hours for all clips
    units_for_target: float  # CPUs or GPUs this stage alone keeps busy for the target hours
    source: str


@dataclass
class PoolLine:
    pool: str
    hours: float
    units_for_target: int
    units: int  # on the planned cluster
    wall_hours: float


@dataclass
class Plan:
    clips: int
    target_hours: float
    cluster: Cluster
    nodes: int
    wall_hours: float
    video_hours: float
    stages: list[StageLine]
    pools: list[PoolLine]
    bottleneck_pool: str
    bottleneck_stage: str
    unmeasured: list[str]
    shard_bytes: float | None
    manifest_bytes: float
    sources: dict[str, str]
    notes: list[str]


def _read(path: Path, command: str) -> dict:
    if not path.is_file():
        raise PlanError(f"{path} is missing: run {command} to write it")
    return json.loads(path.read_text())


def _need(data: dict, key: str, path: Path, command: str):
    if key not in data:
        raise PlanError(f"{path} has no {key!r} (written by an older bench): rerun {command}")
    return data[key]


def detector_kinds(job: JobConfig) -> str:
    """The job's detector kinds as the curation bench names its runs, e.g. ``adaptive+transnetv2``."""
    return "+".join(sorted({d.kind for d in job.scenes.detectors}))


def load_bench(folder: str | Path, job: JobConfig) -> Bench:
    """Per-clip costs of the job's stages from the bench files in ``folder``."""
    path = Path(folder) / "curation.json"
    cur = _read(path, CURATION_CMD)
    # The scene pass costs what its detectors cost (TransNetV2 on a CPU: ~20x PySceneDetect's): take the bench run
    # made with this job's detector kinds where there is one.
    kinds = detector_kinds(job)
    measured = cur.get("detectors", "adaptive")
    notes = []
    if kinds in cur.get("runs", {}):
        cur, measured = {**cur, **cur["runs"][kinds]}, kinds
    elif kinds != measured:
        notes.append(f"the scene pass was measured with detectors {measured}, not this job's {kinds}: "
                     f"its cost differs (rerun {CURATION_CMD} with a run of these detectors)")
    clips, cores, busy, wall, video_s = (_need(cur, k, path, CURATION_CMD)
                                         for k in ("clips", "cores", "stage_busy_s", "ours_s", "video_seconds"))
    if clips < 1:
        raise PlanError(f"{path}: the bench wrote no clips, so it gives no per-clip cost: rerun {CURATION_CMD}")
    where = f"curation.json, {clips} clips, detectors {measured}, {cores} cores of this machine"
    stages = [cls.name for cls in enabled_cpu_stages(job)]
    # A CPU stage added after the bench file was written (the text filter): unmeasured, said in a note.
    newer = [s for s in stages if s not in busy and s not in ("scenes", "encode")]
    notes += [f"{s} not measured ({path.name} predates it): rerun {CURATION_CMD}" for s in newer]
    rates = [StageRate(s, "cpu", _need(busy, s, path, CURATION_CMD) / clips, f"stage_busy_s.{s} / clips ({where})")
             for s in stages if s not in newer]
    # What the stages' busy time leaves out: Ray scheduling, the shard sink, the driver's commits, idle tails.
    overhead = (wall - cur.get("ray_start_s", 0.0)) * cores - sum(busy.get(s, 0.0) for s in CPU_STAGES)
    if overhead > 0:
        rates.append(StageRate(OVERHEAD, "cpu", overhead / clips,
                               f"(ours_s - ray_start_s) x cores - busy, / clips ({where})"))
    bench = Bench(clips, video_s, cores, cur.get("bytes_written"), rates, unmeasured=newer, notes=notes)
    if job.aesthetic.enabled or job.caption.enabled:
        _model_rates(Path(folder) / "model_stages.json", job, bench)
    return bench


def _model_rates(path: Path, job: JobConfig, bench: Bench) -> None:
    data = _read(path, MODEL_CMD)
    stages = _need(data, "stages", path, MODEL_CMD)
    prep = _need(stages, "caption_prep", path, MODEL_CMD)
    # Caption prep is decode + resize, no model: its CPU rate holds whatever mode the bench ran in.
    bench.rates.append(StageRate("caption_prep", "cpu", 1 / prep["clips_per_s"],
                                 f"model_stages.json stages.caption_prep.clips_per_s, one process ({data['mode']})"))
    # The GPU stages in pipeline order: (stage, its measurement's key, the batch size of those benchmarked at
    # several). The caption stage's rate is the engine's the job names: vLLM keeps every clip in flight.
    vllm = job.caption.engine == "vllm"
    gpu = [(name, key, batch) for name, key, batch, on in (
        ("aesthetic", "aesthetic", job.aesthetic.batch_size, job.aesthetic.enabled),
        ("caption", "caption_vllm" if vllm else "caption", None if vllm else job.caption.batch_size,
         job.caption.enabled),
        ("subjects", "subjects", None, job.caption.enabled and job.subjects.enabled),
    ) if on]
    per_gpu = data.get("clips_per_s_per_gpu")
    if per_gpu is None:
        bench.unmeasured += [name for name, _, _ in gpu]
        bench.notes.append(f"GPU stages not measured ({path.name} holds '{data['mode']}' results): "
                           f"run {GPU_VLLM_CMD if vllm else GPU_MODEL_CMD} for their GPU-hours")
        return
    device = data.get("device", "GPU")
    for name, key, batch in gpu:
        measured = stages.get(f"{key}_batch_{batch}") if batch is not None else None
        if measured:
            rate, src = measured["clips_per_s"], f"stages.{key}_batch_{batch}"
        elif key not in per_gpu:
            bench.unmeasured.append(name)
            rerun = GPU_VLLM_CMD if key == "caption_vllm" else GPU_MODEL_CMD
            on = " on vLLM" if key == "caption_vllm" else ""
            bench.notes.append(f"{name}{on} not measured ({path.name} comes from an older bench): rerun {rerun}")
            continue
        else:
            rate, src = per_gpu[key], f"clips_per_s_per_gpu.{key}"
            if batch is not None:
                src += " (best batch size)"
                bench.notes.append(f"{name}.batch_size={batch} was not benchmarked: "
                                   "the best measured batch size's rate is used")
        if name == "subjects":
            # Detection and segmentation run on every frame looked at: the cost scales with track_frames (a
            # bench file from before tracking measured one keyframe per clip).
            measured_frames = data.get("subjects_track_frames", 1)
            if measured_frames != job.subjects.track_frames:
                rate *= measured_frames / job.subjects.track_frames
                src += f" x {measured_frames}/{job.subjects.track_frames} frames per clip"
        bench.rates.append(StageRate(name, "gpu", 1 / rate, f"model_stages.json {src}, {device}"))


def manifest_row_bytes(job: JobConfig) -> float:
    """Upper bound of one manifest row, uncompressed (see the constants above)."""
    row = float(ROW_FIXED_BYTES)
    if job.caption.enabled:
        row += job.caption.max_new_tokens * BYTES_PER_TOKEN
    if job.caption.enabled and job.subjects.enabled:
        width = (job.encode.max_short_side or DEFAULT_SHORT_SIDE) * 16 / 9  # landscape 16:9 clips
        sub = job.subjects
        row += sub.max_subjects * (SUBJECT_FIXED_BYTES + RLE_BYTES_PER_COLUMN * width / 2
                                   + sub.track_frames * TRACK_POINT_BYTES + sub.references * REFERENCE_BYTES
                                   + EMBEDDING_DIM * EMBEDDING_BYTES_PER_DIM)
    return row


def make_plan(bench: Bench, job: JobConfig, clips: int, target_hours: float, cluster: Cluster) -> Plan:
    if clips < 1 or target_hours <= 0 or (cluster.nodes is not None and cluster.nodes < 1):
        raise PlanError("--clips and --nodes must be >= 1 and --hours > 0")
    per_node = {"cpu": cluster.cpus_per_node, "gpu": cluster.gpus_per_node}
    lines = [StageLine(r.stage, r.pool, r.seconds_per_clip, clips * r.seconds_per_clip / 3600,
                       clips * r.seconds_per_clip / 3600 / target_hours, r.source) for r in bench.rates]
    hours = {p: sum(s.hours for s in lines if s.pool == p) for p in ("cpu", "gpu") if any(s.pool == p for s in lines)}
    for p in hours:
        if per_node[p] < 1:
            raise PlanError(f"the job has {p.upper()} stages but the nodes have no {p.upper()}s (--{p}s-per-node)")
    needed = {p: math.ceil(h / target_hours) for p, h in hours.items()}
    nodes = cluster.nodes or max(1, *(math.ceil(needed[p] / per_node[p]) for p in hours))
    wall = {p: h / (nodes * per_node[p]) for p, h in hours.items()}
    pool = max(wall, key=wall.get)
    stage = max((s for s in lines if s.pool == pool and s.stage != OVERHEAD), key=lambda s: s.hours).stage
    sources = {
        "cpu_rates": f"measured on this machine's cores ({bench.cores} in the curation bench): scale by the cluster's core speed",
        "video": f"curation.json: {bench.clips} clips from {bench.video_seconds:.1f} s of video",
    }
    shard = None
    if bench.shard_bytes is not None:
        shard = clips * bench.shard_bytes / bench.clips
        sources["shards"] = f"curation.json bytes_written / clips = {bench.shard_bytes / bench.clips / 1e6:.2f} MB/clip"
    e = job.encode
    notes = bench.notes + [
        f"per-clip costs assume the bench's clips ({bench.video_seconds / bench.clips:.1f} s of source video per "
        f"clip); this job's clip lengths ({' to '.join(f'{s:g} s ({src})' for s, src in job.scenes.limits_s())}) "
        "change that",
        f"encode rate and shard bytes come from the bench's encode settings (benchmarks/curation_bench.py); this job "
        f"encodes preset={e.preset} crf={e.crf} max_short_side={e.max_short_side}",
    ]
    if shard is None:
        notes.append("shard size not measured: curation.json has no 'bytes_written' (the bench run's shard bytes), "
                     f"which benchmarks/curation_bench.py must record, then {CURATION_CMD}")
    sources["manifest"] = ("estimate, uncompressed upper bound: every caption at max_new_tokens, max_subjects masks, "
                           "tracks, references and embeddings")
    if job.caption.enabled and job.subjects.enabled:
        notes.append(f"shard bytes are the CPU bench's, without subject crops: each kept subject adds its keyframe "
                     f"crop and up to subjects.references={job.subjects.references} more (benchmarks/"
                     "subject_refs_bench.py measures the bytes per clip)")
    return Plan(
        clips=clips, target_hours=target_hours, cluster=cluster, nodes=nodes, wall_hours=max(wall.values()),
        video_hours=clips * bench.video_seconds / bench.clips / 3600, stages=lines,
        pools=[PoolLine(p, h, needed[p], nodes * per_node[p], wall[p]) for p, h in hours.items()],
        bottleneck_pool=pool, bottleneck_stage=stage, unmeasured=bench.unmeasured, shard_bytes=shard,
        manifest_bytes=clips * manifest_row_bytes(job), sources=sources, notes=notes,
    )


def to_json(plan: Plan) -> str:
    return json.dumps(asdict(plan), indent=2)


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_plan(plan: Plan, job_name: str) -> str:
    c = plan.cluster
    sized = f"{plan.nodes} node(s) given" if c.nodes else f"sized for {plan.target_hours:g} h"
    out = [f"plan for {job_name}: {plan.clips:,} clips; nodes of {c.cpus_per_node} CPUs + {c.gpus_per_node} GPUs, {sized}",
           f"source video needed: {plan.video_hours:,.0f} h  ({plan.sources['video']})", "",
           f"{'stage':<13} {'pool':<4} {'s/clip':>8} {'hours':>11} {f'units@{plan.target_hours:g}h':>10}  measured from"]
    for s in plan.stages:
        out.append(f"{s.stage:<13} {s.pool.upper():<4} {s.seconds_per_clip:>8.3f} {s.hours:>11,.1f} "
                   f"{s.units_for_target:>10.1f}  {s.source}")
    out.append("")
    for p in plan.pools:
        out.append(f"{p.pool.upper()} pool: {p.hours:,.0f} {p.pool.upper()}-hours; {p.units_for_target:,} "
                   f"{p.pool.upper()}s finish in {plan.target_hours:g} h; on {p.units:,} {p.pool.upper()}s: {p.wall_hours:,.1f} h")
    out += [f"cluster: {plan.nodes} node(s) -> wall time {plan.wall_hours:,.1f} h",
            f"bottleneck: the {plan.bottleneck_pool.upper()} pool, mostly {plan.bottleneck_stage}"
            + (f" (of the measured stages; not measured: {', '.join(plan.unmeasured)})" if plan.unmeasured else ""),
            f"storage: shards {_size(plan.shard_bytes) if plan.shard_bytes is not None else 'not measured'}"
            + (f" ({plan.sources['shards']})" if "shards" in plan.sources else "")
            + f"; manifest <= {_size(plan.manifest_bytes)} ({plan.sources['manifest']})",
            f"CPU rates: {plan.sources['cpu_rates']}"]
    out += [f"note: {n}" for n in plan.notes]
    return "\n".join(out)

"""The trainer on CPU with gloo: FSDP2 gradients, kill-and-resume from object storage, learning on curated clips."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psutil
import pytest
import torch
from safetensors.torch import load_file

from common import contract as C
from jobs.loopback_s3 import free_port

from .data_fixtures import Clip, write_dataset
from .model_fixtures import tiny_checkpoints

ROOT = Path(__file__).resolve().parents[1]

# Tiny model, tiny clips: 9 frames at 32x32, two subjects at most; the AlignerNet trained from scratch (ablation d).
SCRATCH = "ablation.aligner_from_scratch=true"
TINY = ["model.preset=tiny", f"model.overrides=[{SCRATCH}]", "data.frames=[9]", "data.target_fps=null",
        "data.buckets=[[32,32]]",
        "data.num_workers=0", "data.shuffle_buffer=4", "metrics.every=1",
        "metrics.tensorboard=false", "optim.warmup_steps=0", "parallel.param_dtype=float32"]


def torchrun(ranks: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}"]


def train_args(out: Path, *overrides: str) -> list[str]:
    """The `python -m training` arguments of a tiny run writing to ``out``."""
    return [a for o in (*TINY, f"model.checkpoints={tiny_checkpoints()}", f"out_dir={out}", *overrides)
            for a in ("--set", o)]


def train_cmd(out: Path, *overrides: str, ranks: int = 2) -> list[str]:
    launcher = torchrun(ranks) if ranks > 1 else [sys.executable]
    return [*launcher, "-m", "training", *train_args(out, *overrides)]


def jobs_cmd(jobs: list[list[str]]) -> list[str]:
    """One 2-rank launch running several trainings (``train_args`` each) one after the other."""
    return torchrun(2) + ["-m", "tests.train_jobs_worker", json.dumps([[free_port(), job] for job in jobs])]


def precompute_cmd(*overrides: str) -> list[str]:
    """``python -m training.precompute`` of the tiny model on CPU (a local Ray of one CPU)."""
    sets = [a for o in (*TINY, f"model.checkpoints={tiny_checkpoints()}", "precompute.num_gpus=0",
                        "precompute.local_cpus=1", *overrides) for a in ("--set", o)]
    return [sys.executable, "-m", "training.precompute", *sets]


def metrics(out: Path, field: str = "loss") -> dict[int, float]:
    return {r["step"]: r[field] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def validation(out: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in map(json.loads, (out / "validation.jsonl").read_text().splitlines())}


def samples(out: Path, rank: int) -> dict[tuple[int, int], list[str]]:
    """(step, micro) -> keys; a step seen twice (before a kill and after the resume) keeps its last record."""
    seen = {}
    for r in map(json.loads, (out / f"samples-rank{rank}.jsonl").read_text().splitlines()):
        seen[(r["step"], r["micro"])] = r["keys"]
    return seen


@pytest.mark.slow
def test_fsdp_two_ranks_match_single_process_gradients():
    cmd = torchrun(2) + ["-m", "tests.fsdp_grad_worker", tiny_checkpoints()]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("GRADS-MATCH")), None)
    assert line, out.stdout[-2000:] + out.stderr[-3000:]
    fields = dict(kv.split("=") for kv in line.split()[1:])
    assert int(fields["params"]) > 50
    assert float(fields["max_diff"]) < 1e-6 * float(fields["scale"]) + 1e-7, line


def mixed_clips(n: int) -> list[Clip]:
    """Tiny clips of two lengths (17 frames for every third, else 9), each its own source."""
    return [Clip(f"c{i:02d}", 32, 32, num_frames=17 if i % 3 == 0 else 9, num_subjects=i % 3,
                 caption=f"a ball number {i}") for i in range(n)]


# Mixed-length buckets (9 and 17 frames) and a validation split: of c00..c07, sources c02 and c05 are held out.
MIXED = ["data.frames=[9,17]", "validation.fraction=0.25", "validation.every=2", "validation.clips=2",
         "validation.timesteps=[0.3,0.8]"]


@pytest.fixture(scope="module")
def s3_dataset(s3_server, tmp_path_factory):
    """Eight tiny clips of two lengths in 4 shards, uploaded to a bucket on the loopback S3 server."""
    local = tmp_path_factory.mktemp("ds")
    write_dataset(local, mixed_clips(8), clips_per_shard=2)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="train")
    for f in local.rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), "train", f"ds/{f.relative_to(local)}")
    return s3_server, "s3://train/ds"


# How a kill-and-resume run trains: the encoders' mode, or AdamW stepped in the backward (encoders replicated).
MODES = {"replicated": ["model.encoders=replicated"], "sharded": ["model.encoders=sharded"],
         "precomputed": ["model.encoders=precomputed"],
         "in_backward": ["model.encoders=replicated", "optim.step_in_backward=true", "optim.grad_clip=0"]}


# Each kill-and-resume variant: which processes are killed, and the mode of the run.
VICTIMS = [("every process", "replicated"), ("rank 1 alone", "replicated"), ("every process", "sharded"),
           ("every process", "precomputed"), ("every process", "in_backward")]


def kill_launch(proc: subprocess.Popen) -> None:
    """Kill a torchrun launch: its ranks (torchrun starts each in its own session) and the launcher."""
    try:
        launcher = psutil.Process(proc.pid)
        processes = [*launcher.children(recursive=True), launcher]
    except psutil.NoSuchProcess:  # the launch has ended
        return
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def kill_when_checkpointed(cmd: list[str], out: Path, victim: str, log: Path) -> tuple[int, int]:
    """Start the launch ``cmd``, whose last run writes to ``out``, and kill it as soon as that run has checkpointed
    step 2: every process (launcher and both ranks), or one rank, after which torchrun stops the other and fails.
    (The launch's exit code, the last complete checkpoint's step.)"""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 600
    try:
        while not (out / "checkpoints" / "step-00000002").is_dir():
            assert proc.poll() is None and time.time() < deadline, \
                "the run ended before it could be killed: " + log.read_text()[-3000:]
            time.sleep(0.02)
    except BaseException:  # a stuck launch (or pytest's timeout) leaves no rank running
        kill_launch(proc)
        raise
    if victim == "every process":
        kill_launch(proc)
    else:
        ranks = psutil.Process(proc.pid).children(recursive=True)
        next(p for p in ranks if p.environ().get("RANK") == "1").kill()
    code = proc.wait(timeout=120)
    return code, max(int(p.name[5:]) for p in (out / "checkpoints").glob("step-????????"))


class KillAndResume:
    """The runs of the VICTIMS variants on 2 ranks: ``references`` (mode -> an uninterrupted 6-step run) and, per
    variant, the run killed after its checkpoint of step 2 and rerun to step 6 (``resumed``).

    A launch's start-up costs more than a run, so one launch serves several: the first runs the references, then
    the first victim until it is killed; each next one reruns the victim killed before it, then runs the next victim
    until it is killed; the last reruns the last victim. Every rerun is the first run of a fresh launch. Launches
    are made as the variants ask for their runs, so a variant waits for one launch or two."""

    def __init__(self, tmp: Path, base: list[str]):
        self.tmp, self.base = tmp, base
        self.references = {mode: tmp / f"reference-{mode}" for mode in ("replicated", "sharded", "precomputed")}
        self.pending = [self._args(out, mode) for mode, out in self.references.items()]
        self.victims: dict[tuple[str, str], tuple[Path, int, int]] = {}

    def _args(self, out: Path, mode: str) -> list[str]:
        return train_args(out, *self.base, *MODES[mode])

    def resumed(self, variant: tuple[str, str]) -> tuple[Path, int, int]:
        """(the rerun's output folder, the killed launch's exit code, the step of its last complete checkpoint)."""
        while len(self.victims) <= VICTIMS.index(variant) + 1 and self.pending:
            self._launch()
        return self.victims[variant]

    def _launch(self) -> None:
        n = len(self.victims)
        if n == len(VICTIMS):  # the last rerun
            subprocess.run(jobs_cmd(self.pending), cwd=ROOT, check=True, capture_output=True, timeout=600)
            self.pending = []
            return
        victim, mode = VICTIMS[n]
        out = self.tmp / f"resumed-{n}"
        run = self._args(out, mode)
        code, last = kill_when_checkpointed(jobs_cmd([*self.pending, run]), out, victim, self.tmp / f"launch-{n}.log")
        self.victims[(victim, mode)] = out, code, last
        self.pending = [run]  # the rerun resumes from its last complete checkpoint


@pytest.fixture(scope="module")
def kill_and_resume(s3_dataset, tmp_path_factory) -> KillAndResume:
    endpoint, url = s3_dataset
    data = [f"data.urls=[{url}]", f"data.storage.endpoint_url={endpoint}"]
    # The precomputed mode's features, written into the bucket beside the shards (the other modes do not read them).
    subprocess.run(precompute_cmd(*data, MIXED[0]), cwd=ROOT, check=True, capture_output=True, timeout=600)
    # A clip norm no gradient reaches: the norm is measured and scaling by 1.0 changes nothing, so a run stepping
    # in the backward (which cannot clip) trains exactly as one stepping after it.
    base = ["steps=6", "checkpoint.every=2", "data.batch_size=1", *data, "optim.lr=1e-3", "optim.grad_clip=1e9",
            *MIXED]
    return KillAndResume(tmp_path_factory.mktemp("kill_and_resume"), base)


@pytest.mark.slow
@pytest.mark.parametrize("victim,mode", VICTIMS)
def test_kill_and_resume_continues_the_same_losses_and_samples(kill_and_resume, victim, mode):
    """Killed after its checkpoint of step 2 and rerun: the same losses and samples as an uninterrupted run. The
    sharded MLLM and AdamW stepped in the backward are checked against the replicated run they must equal; the
    one resumed in the backward is that comparison's run (6 steps with a kill are the same as 6 without)."""
    reference = kill_and_resume.references["replicated" if mode == "in_backward" else mode]
    resumed, code, last = kill_and_resume.resumed((victim, mode))
    assert code != 0
    assert last < 6, "the run finished before the kill"

    ref, res = metrics(reference), metrics(resumed)
    assert sorted(res) == list(range(last + 1, 7))  # the resumed run starts after the last complete checkpoint
    assert all(res[s] == pytest.approx(ref[s], rel=1e-5) for s in res), (ref, res)
    if mode == "sharded":  # the MLLM sharded per decoder layer: the same losses as replicated on the same samples
        replicated = metrics(kill_and_resume.references["replicated"])
        assert all(ref[s] == pytest.approx(replicated[s], rel=1e-5) for s in ref), (ref, replicated)
    if mode == "in_backward":  # the gradient norm it measures is the one clipping measures
        norms = [metrics(out, "grad_norm") for out in (reference, resumed)]
        assert all(norms[1][s] == pytest.approx(norms[0][s], rel=1e-5) for s in norms[1]), norms
        want, got = (load_file(out / "trained.safetensors") for out in (reference, resumed))
        assert want.keys() == got.keys()
        assert all(torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-7) for k in want)
    for rank in (0, 1):
        assert samples(resumed, rank) == samples(reference, rank)
    keys = {k for rank in (0, 1) for ks in samples(reference, rank).values() for k in ks}
    assert keys == {f"c{i:02d}" for i in (0, 1, 3, 4, 6, 7)}  # 12 samples, both lengths: every clip but c02, c05
    # The validation loss on the held-out clips, at fixed timesteps and noise: the same after the resume.
    val_ref, val_res = (validation(out) for out in (reference, resumed))
    assert sorted(val_ref) == [2, 4, 6] and set(val_res) >= {s for s in val_ref if s > last}  # and before the kill
    assert all(val_res[s] == pytest.approx(val_ref[s], rel=1e-5) for s in val_res), (val_ref, val_res)
    assert (resumed / "trained.safetensors").stat().st_size > 10_000
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-00000002", "step-00000004", "step-00000006"]


@pytest.mark.slow
def test_tiny_model_learns_on_curated_clips(curated, tmp_path):
    cfg, _, _ = curated
    out = tmp_path / "run"
    subprocess.run(train_cmd(out, "steps=40", "data.batch_size=4", f"data.urls=[{cfg.output}]", "optim.lr=3e-3",
                             "checkpoint.every=1000", "data.shuffle_buffer=16", ranks=1),
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    loss = metrics(out)
    first, last = sum(loss[s] for s in range(1, 6)) / 5, sum(loss[s] for s in range(36, 41)) / 5
    assert last < 0.75 * first, loss  # a trainer that does not learn stays near the first value (~1.5)
    assert (out / "loss_curve.png").stat().st_size > 5_000


def test_a_subject_from_a_shard_and_the_same_png_given_to_generate_reach_the_model_identically(tmp_path):
    """Wide, tall and square crops in a wide bucket: the loader + model_batch path and generate's path
    (``subject_tensor`` on the PNG file) give the same tensors, the crop fitted into the frame on white."""
    import io

    import torch
    from PIL import Image

    from cinema_model.subjects import subject_tensor
    from training.batch import model_batch
    from training.data import ShardLoader

    from .data_fixtures import clip_row, data_preset

    write_dataset(tmp_path / "ds", [Clip("wide", 48, 32, num_frames=3, num_subjects=4)], clips_per_shard=1)
    cfg = data_preset("tiny", urls=[str(tmp_path / "ds")], frames=[3], buckets=[(32, 48)], shuffle_buffer=1)
    batch = model_batch(next(iter(ShardLoader(cfg))), torch.device("cpu"))
    pngs = clip_row(Clip("wide", 48, 32, num_subjects=4)).pngs  # 8x12, 12x12, 16x12 and 20x12 red discs
    for k, png in enumerate(pngs):
        (tmp_path / f"s{k}.png").write_bytes(png)
        given = subject_tensor(Image.open(tmp_path / f"s{k}.png"), 32, 48)
        assert torch.equal(batch["subjects"][0, k], given), k
        red = (given[0] > 0.5) & (given[1] < -0.5)
        cols, rows = red.any(0).nonzero().flatten(), red.any(1).nonzero().flatten()
        w, h = Image.open(io.BytesIO(png)).size
        # Fitted into 48x32, not into a square first: the 20x12 disc spans about 48 columns, not 32.
        assert abs((cols.max() - cols.min() + 1) - min(48, w * 32 / h)) <= 3 and rows.max() - rows.min() + 1 >= 28


def test_no_weight_decay_on_norms_biases_and_the_aligner_queries():
    from torch import nn

    from cinema_model.model import CinemaModel
    from training.optimizer import param_groups
    from training.parallelize import apply_activation_checkpointing

    from .model_fixtures import tiny_config

    model = CinemaModel(tiny_config())
    apply_activation_checkpointing(model)  # the wrappers' names must not hide the exemptions
    trained = nn.ModuleDict(model.trainable_parts())
    decay, no_decay = param_groups(trained, 0.01)
    names = {id(p): n for n, p in trained.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    one_d = {n for n, p in trained.named_parameters() if p.ndim < 2}
    assert exempt == one_d | {"aligner.queries"}
    assert any("norm" in n for n in one_d) and any(n.endswith("bias") for n in one_d)
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def test_mfu_counts_the_subject_slots_compute_runs_at():
    import torch

    from cinema_model.config import latent_frames
    from cinema_model.flops import dit_train_flops
    from cinema_model.model import CinemaModel
    from training.trainer import _per_sample_cost

    from .model_fixtures import tiny_config

    model = CinemaModel(tiny_config())
    batch = {"video": torch.zeros(3, 9, 3, 32, 32, dtype=torch.uint8), "num_subjects": torch.tensor([0, 0, 3])}
    _, flops = _per_sample_cost(model, batch, "cinema")
    assert flops == dit_train_flops(model.cfg.dit, latent_frames(9), 4, 4, model.cfg.t5.max_length, 3)  # not the mean 1


def test_settings_that_cannot_work_together_are_refused():
    from training.config import ConfigError, load_train_job

    full = ["model.preset=full", "data.urls=[x]", f"model.overrides=[{SCRATCH}]"]
    with pytest.raises(ConfigError, match=r"data.frames: \[45\] not 1 \+ 8k"):
        load_train_job(None, [*full, "data.frames=[17,45]"])
    with pytest.raises(ConfigError, match=r"data.buckets: \[\[360, 640\]\] not multiples of 16"):
        load_train_job(None, [*full, "data.buckets=[[480,720],[360,640]]"])
    with pytest.raises(ConfigError, match=r"set optim.grad_clip=0 and grad_accum=1 \(now 1.0 and 1\)"):
        load_train_job(None, [*full, "optim.step_in_backward=true"])
    # A cinema stage whose AlignerNet would start random is the paper's ablation (d): refused unless named.
    with pytest.raises(ConfigError, match=r"ablation \(d\).*aligner.pretrained=.*ablation.aligner_from_scratch=true"):
        load_train_job(str(ROOT / "jobs" / "train_cluster.yaml"), ["model.overrides=[]"])
    assert load_train_job(None, [*full[:2], "model.overrides=[ablation.conditioning=t5]"])  # no AlignerNet at all
    # The shipped recipe: stage 1 on captions, then the cinema stage starting from its weights, on the contract's
    # training window.
    aligner = load_train_job(str(ROOT / "jobs" / "train_aligner_cluster.yaml"))
    for name in ("train_cluster", "precompute_cluster"):
        cinema = load_train_job(str(ROOT / "jobs" / f"{name}.yaml"))
        assert (aligner.stage, cinema.stage) == ("aligner", "cinema")
        assert f"aligner.pretrained={aligner.out_dir}/trained.safetensors" in cinema.model.overrides
        assert cinema.data.frames == list(C.TRAINING_WINDOW.frame_counts) == [17, 25, 33, 41, 49]
        assert cinema.validation.fraction > 0 and aligner.validation.fraction == cinema.validation.fraction


def test_a_checkpoint_cut_off_while_saving_is_never_loaded(tmp_path):
    from training.checkpoint import Checkpointer

    from .test_checkpoint_safety import state

    Checkpointer(tmp_path, keep=3).save(state(step=2))
    partial = tmp_path / "step-00000004.partial"  # what a kill during a save leaves: files, but no rename
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"\0" * 100)
    assert Checkpointer(tmp_path, keep=3).latest() == tmp_path / "step-00000002"


def adam_steps(checkpoint: Path) -> dict[str, float]:
    """Parameter name -> the update count AdamW's state holds for it in a checkpoint, read in one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from training.checkpoint import SafeLoadPlanner, SafeReader

    reader = SafeReader(checkpoint)
    prefix = "train.optim.state."
    wanted = {k: torch.empty(m.size, dtype=m.properties.dtype)
              for k, m in reader.read_metadata().state_dict_metadata.items()
              if k.startswith(prefix) and k.endswith(".step") and isinstance(m, TensorStorageMetadata)}
    dcp.load(wanted, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=True)
    return {k.removeprefix(prefix).removesuffix(".step"): float(v) for k, v in wanted.items()}


@pytest.mark.slow
def test_resume_on_another_world_size_with_activation_checkpointing_flipped(tmp_path):
    """2 ranks (AC on) -> 1 rank (AC off, AdamW stepped in the backward) -> 2 ranks (AC on, AdamW after it), each
    from the last one's checkpoint, on clips of two lengths (buckets of 9 and 17 frames), an EMA turned on at the
    first resume: the step and LR schedule go on, AdamW's state carries across both optimizer layouts, no sample of
    the epoch is trained twice, and the loader counters of every rank reach the metrics and the data summary (rank
    1's first sample is not a video)."""
    from safetensors import safe_open

    from training.data.stream import plan_epoch

    clips = mixed_clips(16)
    shard = plan_epoch(8, 0, 0, 1, 2)[0][0]  # the shard rank 1 reads first (seed 0, 2 slots, 8 shards)
    # Shards are listed by name, and named after their clips: find the pair of clips that shard holds.
    names = [C.shard_name([(f"/videos/{c.clip_id}.mp4", c.clip_id) for c in clips[i : i + 2]]) for i in range(0, 16, 2)]
    first = 2 * sorted(range(8), key=names.__getitem__)[shard]
    clips[first].mp4 = b"not a video" * 50
    write_dataset(tmp_path / "ds", clips, clips_per_shard=2)
    args = ["checkpoint.every=2", "data.shuffle_buffer=1", f"data.urls=[{tmp_path / 'ds'}]", "optim.lr=1e-3",
            "data.frames=[9,17]"]
    ema = "optim.ema_decay=0.9"

    def run(name, ranks, steps, *more, resume_from=None):
        out = tmp_path / name
        start = [f"checkpoint.resume_from={resume_from}"] if resume_from is not None else []  # another run's
        done = subprocess.run(train_cmd(out, f"steps={steps}", *args, *more, *start, ranks=ranks), cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        return out, [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()], done.stderr

    a, rows_a, _ = run("a", 2, 4)
    assert [r["data_skipped"] for r in rows_a] == [1, 1, 1, 1]  # rank 1's, summed over ranks
    summary = [json.loads(r) for r in (a / "data.jsonl").read_text().splitlines()][-1]
    assert (summary["step"], summary["trained"], summary["corrupt"], summary["too_short"]) == (4, 8, 1, 0)
    b, rows_b, log_b = run("b", 1, 4, "parallel.activation_checkpointing=false", "optim.step_in_backward=true",
                           "optim.grad_clip=0", ema,
                           resume_from=a / "checkpoints" / "step-00000002")
    assert "re-derived" in log_b and "no sample is seen twice in an epoch" in log_b
    assert "holds no EMA; it starts from the resumed weights" in log_b  # turned on at a resume: no DCP error
    assert (b / "trained.ema.safetensors").is_file()
    assert [r["step"] for r in rows_b] == [3, 4]
    assert [r["lr"] for r in rows_b] == [r["lr"] for r in rows_a[2:]]  # the schedule went on
    assert abs(rows_b[0]["loss"] - rows_a[2]["loss"]) < 0.3, (rows_a, rows_b)  # other samples, the same weights
    c, rows_c, log_c = run("c", 2, 6, ema, resume_from=b / "checkpoints" / "step-00000004")
    assert [r["step"] for r in rows_c] == [5, 6] and "holds no EMA" not in log_c
    steps = adam_steps(c / "checkpoints" / "step-00000006")
    assert len(steps) > 50 and set(steps.values()) == {6.0}, steps  # every parameter's moments saw all 6 updates
    trained = [k for out, ranks, steps in ((a, 2, (1, 2)), (b, 1, (3, 4)), (c, 2, (5, 6)))
               for rank in range(ranks) for step in steps for k in samples(out, rank)[(step, 0)]]
    assert len(trained) == 10 and len(set(trained)) == 10, trained  # one epoch of 15 good clips: none twice
    assert clips[first].clip_id not in trained
    lengths = {c.clip_id: c.num_frames for c in clips}
    assert {lengths[k] for k in trained} == {9, 17}  # both buckets trained, each clip at its own length
    weights = c / "trained.safetensors"
    assert weights.stat().st_mode & 0o777 == 0o644
    with safe_open(str(weights), "pt") as f:
        about = f.metadata()
    assert (about["preset"], about["stage"], about["step"]) == ("tiny", "cinema", "6")
    assert json.loads(about["config"])["parallel"]["activation_checkpointing"] is True


@pytest.mark.slow
def test_a_data_error_is_one_message_not_a_traceback_per_rank(tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run(train_cmd(tmp_path / "run", f"data.urls=[{tmp_path / 'empty'}]"), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("no committed shards") == 1, done.stderr
    assert f'File "{ROOT / "training"}' not in done.stderr  # no rank's traceback (torchrun adds its own summary)
    # A dataset of which no clip holds a window: one error at start-up, not a run that waits for a batch for ever.
    write_dataset(tmp_path / "short", [Clip(f"s{i}", 32, 32, num_frames=5) for i in range(3)], clips_per_shard=2)
    done = subprocess.run(train_cmd(tmp_path / "run2", f"data.urls=[{tmp_path / 'short'}]"), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("no clip of data.urls can be trained on: 3 clips; 0 train") == 1, done.stderr[-3000:]
    assert "3 too short for the shortest window (9 frames at every fps)" in done.stderr

"""The trainer's configuration (typed dataclasses, loaded with ``common.typed_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cinema_model.config import preset
from common.contract import MAX_SUBJECTS, TRAINING_WINDOW, TrainingWindow
from common.storage import StorageConfig
from common.typed_config import ConfigError, load


class JobError(ValueError):
    """What stops a run that the user must fix (data that cannot be read, a checkpoint that cannot be used): one
    message, no traceback. ``shared`` says every rank raised the same one, so rank 0 alone reports it."""

    def __init__(self, message: str, shared: bool = False):
        super().__init__(message)
        self.shared = shared


@dataclass
class DataConfig:
    """The streaming loader: where the shards are, what one sample becomes, how the stream is split and shuffled.

    Credentials for s3:// come from the environment (AWS_ACCESS_KEY_ID, ...), never from here.
    """

    # Dataset roots (local folder or s3://bucket/prefix; the shards are those named by manifest/) or explicit
    # shard URLs ending in .tar (local, s3:// or http(s)://; http has no listing, so it needs explicit shards).
    urls: list[str] = field(default_factory=list)
    storage: StorageConfig = field(default_factory=StorageConfig)  # the same section as a curation job's
    # Frame counts, increasing: a clip gives the longest its length allows, its frames taken from its first one
    # every round(clip fps / target_fps) frames (None: every frame). The dataset contract's training window:
    # 17 to 49 (2 to 6 s at 8 fps), each 1 + 8k, which CogVideoX's VAE keeps in place.
    frames: list[int] = field(default_factory=lambda: list(TRAINING_WINDOW.frame_counts))
    target_fps: float | None = TRAINING_WINDOW.fps
    # (height, width); each clip goes to the size nearest its aspect ratio, resized to cover it and centre-cropped.
    # A batch holds one bucket: one frame count at one size.
    buckets: list[tuple[int, int]] = field(default_factory=lambda: [(480, 720), (720, 480), (480, 480)])
    max_subjects: int = MAX_SUBJECTS  # subject crops are framed at the clip's bucket size (cinema_model.subjects)
    batch_size: int = 1  # per rank
    num_workers: int = 4  # loader processes per rank; 0 reads in the training process
    prefetch_factor: int = 2  # batches each worker prepares ahead
    shuffle_buffer: int = 32  # encoded samples held per worker (about 1-5 MB each); 1 keeps the shard order
    seed: int = 0
    retries: int = 3  # attempts to reopen a shard after a read error, before it is skipped
    retry_backoff_s: float = 0.5  # doubled after each failed attempt
    # The largest shard member read (a clip, a caption, a crop, a features file); a larger one is skipped with its
    # sample, counted (members_rejected). Bounds what a hostile shard makes a loader worker allocate.
    max_member_mb: float = 256.0
    # Clips the dataset's dedup record (python -m curation dedup) marks as near duplicates of a kept clip: "drop"
    # leaves them out of training and validation; "keep" trains on every clip.
    near_duplicates: Literal["drop", "keep"] = "drop"
    # The image each subject is conditioned on: "same_clip", its crop from the clip's keyframe, inside the frames
    # the model is asked to generate (the model can learn to copy it); "other_frames", one of its reference crops
    # from other frames of the clip; "other_clip", one of its crops from other clips of the source (the dataset's
    # identity record, python -m curation identities). A subject without one falls back to the next mode, down to
    # same_clip; the choice among several is drawn per (seed, epoch, clip, subject).
    subject_references: Literal["same_clip", "other_frames", "other_clip"] = "other_clip"

    def validate(self) -> None:
        if not self.urls:
            raise ConfigError("data.urls: give at least one dataset root or shard URL")
        if not self.frames or self.frames[0] < 1 or any(a >= b for a, b in zip(self.frames, self.frames[1:])):
            raise ConfigError(f"data.frames={self.frames}: give increasing frame counts, each >= 1")
        if self.batch_size < 1 or self.shuffle_buffer < 1:
            raise ConfigError("data: batch_size and shuffle_buffer must be >= 1")
        if self.target_fps is not None and self.target_fps <= 0:
            raise ConfigError("data.target_fps must be > 0 (or null for every frame)")
        if not self.buckets or any(h < 1 or w < 1 for h, w in self.buckets):
            raise ConfigError("data.buckets: give at least one (height, width) with both >= 1")
        if not 0 <= self.max_subjects <= MAX_SUBJECTS:
            raise ConfigError(f"data.max_subjects must be within 0..{MAX_SUBJECTS} (the dataset contract)")
        if self.num_workers < 0 or self.prefetch_factor < 1 or self.retries < 0 or self.retry_backoff_s < 0:
            raise ConfigError("data: num_workers and retries must be >= 0, prefetch_factor >= 1, retry_backoff_s >= 0")
        if not self.max_member_mb > 0:
            raise ConfigError(f"data.max_member_mb={self.max_member_mb}: must be > 0")

    @property
    def window(self) -> TrainingWindow:
        return TrainingWindow(tuple(self.frames), self.target_fps)

    @property
    def num_buckets(self) -> int:
        return len(self.frames) * len(self.buckets)

    def bucket(self, frames: int, size: int) -> int:
        """The bucket of ``frames`` frames at ``buckets[size]``."""
        return self.frames.index(frames) * len(self.buckets) + size

    def bucket_shape(self, bucket: int) -> tuple[int, int, int]:
        """(frames, height, width) of a bucket."""
        return self.frames[bucket // len(self.buckets)], *self.buckets[bucket % len(self.buckets)]


@dataclass
class ModelSection:
    preset: Literal["tiny", "mid", "large", "full"] = "full"
    checkpoints: str | None = None  # folder of the tiny frozen parts of the tiny, mid, large presets (python -m tiny_models)
    overrides: list[str] = field(default_factory=list)  # CinemaConfig overrides, e.g. "dit.layers=4"
    # The frozen encoders (MLLM or T5, VAE): "replicated" on every rank; "sharded" (the MLLM fully_shard per decoder
    # layer); "precomputed": their outputs, written beside the shards by `python -m training.precompute JOB.yaml`,
    # are streamed instead of decoding video, and neither the encoders nor the VAE are loaded.
    encoders: Literal["replicated", "sharded", "precomputed"] = "replicated"


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine decays to lr * this at the last step
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_decay: float | None = None  # keep an EMA of the trained weights (exported beside them)
    # Step each parameter inside the backward, its gradient freed at once (training.optimizer): a rank's peak drops
    # by a whole fp32 copy of its shard; needs grad_clip=0 and grad_accum=1.
    step_in_backward: bool = False

    def validate(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1 or self.grad_clip < 0:
            raise ConfigError("optim: need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1, grad_clip >= 0")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError("optim.ema_decay must be within (0, 1)")


@dataclass
class ParallelConfig:
    activation_checkpointing: bool = True
    compile: bool = False
    param_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # FSDP compute dtype; gradients reduce in float32


@dataclass
class CheckpointConfig:
    folder: str = "checkpoints"  # under out_dir unless absolute; shared by all ranks
    every: int = 500  # steps; a checkpoint is also written at the last step
    keep: int = 3
    resume: bool = True  # continue from this run's latest complete checkpoint in folder
    # Another run's checkpoint folder (another out_dir or checkpoint.folder, e.g. another world size's) to start from
    # while this run has no checkpoint of its own, as torchtitan's initial_load_path; the run then goes on in folder.
    # Without it a checkpoint of another run found in folder is refused.
    resume_from: str | None = None
    # Parts of the checkpoint not to load, as torchtitan's exclude_from_loading: "optimizer" starts AdamW's moments
    # afresh, "data" starts the sample stream afresh (e.g. on a new dataset). Weights, EMA, step and LR schedule
    # always load.
    exclude_from_loading: list[Literal["optimizer", "data"]] = field(default_factory=list)

    def validate(self) -> None:
        if self.every < 1 or self.keep < 1:
            raise ConfigError("checkpoint.every and checkpoint.keep must be >= 1")
        if self.resume_from is not None and not self.resume:
            raise ConfigError("checkpoint.resume_from is a checkpoint to resume from: it needs checkpoint.resume=true")


@dataclass
class MetricsConfig:
    every: int = 10
    tensorboard: bool = True


@dataclass
class PrecomputeConfig:
    """``python -m training.precompute JOB.yaml``: a Ray Data job that writes the frozen encoders' outputs for every
    committed shard of the job's dataset roots (``training.data.features``), one shard per actor call."""

    batch_size: int = 4  # clips per encoder call (consecutive clips of one bucket)
    actors: int | None = None  # encoder actors (each loads the encoders once); None: one per GPU share, or 1
    num_gpus: float = 1.0  # per actor; 0 runs the encoders on CPU
    num_cpus: float = 1.0  # per actor (decoding the clips)
    address: str | None = None  # None starts a local Ray on 127.0.0.1; "auto" joins the cluster this runs on
    local_cpus: int | None = None  # local Ray only: CPUs to use (None = all)

    def validate(self) -> None:
        if self.batch_size < 1 or (self.actors is not None and self.actors < 1) or self.num_gpus < 0 \
                or self.num_cpus <= 0 or (self.local_cpus is not None and self.local_cpus < 1):
            raise ConfigError("precompute: batch_size, actors and local_cpus must be >= 1, num_gpus >= 0, "
                              "num_cpus > 0")


@dataclass
class ValidationConfig:
    """A validation split held out by source (``training.data.split``: no clip of a validation source is trained
    on), its loss at fixed timesteps and noise every ``every`` steps, the same clips each time, so the value is
    comparable across runs and resumes; and sample videos generated from a few of those clips' captions and subjects.
    ``fraction: 0`` (the default) holds nothing out and measures nothing."""

    fraction: float = 0.0  # share of sources held out, chosen by a hash of their content (stable as sources are added)
    every: int = 500  # steps between validation losses
    clips: int = 16  # held-out clips the loss is measured on (the same ones every time), at every timestep
    timesteps: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    seed: int = 0  # of the noise (per clip and timestep)
    samples: int = 2  # of those clips, whose caption and subjects are generated as videos (stage cinema)
    sample_every: int = 0  # steps between sample videos (also at the last step); 0: none
    sample_steps: int | None = None  # sampler steps (None: the model's flow.sample_steps)

    def validate(self) -> None:
        if not 0 <= self.fraction < 1:
            raise ConfigError("validation.fraction must be within [0, 1)")
        if self.every < 1 or self.clips < 1 or self.samples < 0 or self.sample_every < 0:
            raise ConfigError("validation: every and clips must be >= 1, samples and sample_every >= 0")
        if not self.timesteps or not all(0 < t <= 1 for t in self.timesteps):
            raise ConfigError("validation.timesteps: give at least one, each within (0, 1]")
        if self.sample_steps is not None and self.sample_steps < 1:
            raise ConfigError("validation.sample_steps must be >= 1 (or null for the model's)")


@dataclass
class TrainJob:
    stage: Literal["aligner", "cinema"] = "cinema"
    steps: int = 1000
    grad_accum: int = 1
    seed: int = 0
    out_dir: str = "out/train"  # metrics, loss curve, TensorBoard, checkpoints and the exported weights
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    precompute: PrecomputeConfig = field(default_factory=PrecomputeConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def validate(self) -> None:
        if self.steps < 1 or self.grad_accum < 1:
            raise ConfigError("steps and grad_accum must be >= 1")
        if self.optim.step_in_backward and (self.optim.grad_clip or self.grad_accum > 1):
            raise ConfigError("optim.step_in_backward updates each parameter as soon as its gradient is ready, so it "
                              "cannot clip to a global norm or accumulate: set optim.grad_clip=0 and grad_accum=1 "
                              f"(now {self.optim.grad_clip} and {self.grad_accum})")
        if self.stage == "cinema":
            self._check_buckets()
            self._check_aligner()
        if self.model.encoders == "precomputed" and self.stage != "cinema":
            raise ConfigError("model.encoders=precomputed is for stage cinema: the aligner stage trains the "
                              "AlignerNet against T5 on captions, which it encodes every step")


    def _check_aligner(self) -> None:
        cfg = preset(self.model.preset, self.model.checkpoints, self.model.overrides)
        if cfg.ablation.conditioning == "mllm" and not cfg.aligner.pretrained and not cfg.ablation.aligner_from_scratch:
            raise ConfigError(
                "stage cinema with MLLM conditioning starts the AlignerNet from an aligner run's weights, and "
                "model.overrides names none (aligner.pretrained): from random weights it is the paper's ablation (d), "
                "which it reports as worse. Train `stage: aligner` first (jobs/train_aligner_cluster.yaml) and set "
                "aligner.pretrained=ITS_OUT_DIR/trained.safetensors, or name the ablation: "
                "ablation.aligner_from_scratch=true")

    def _check_buckets(self) -> None:
        """What the model takes, checked before any data is read (precompute would otherwise spend hours on a
        bucket the DiT refuses at its first batch)."""
        odd = [n for n in self.data.frames if (n - 1) % 8]
        if odd:
            raise ConfigError(f"data.frames: {odd} not 1 + 8k (9, 17, ..., 49): CogVideoX's VAE keeps only an odd "
                              "number of latent frames in place")
        # VAE 8x, then the DiT's 2x2 patches.
        bad = [list(b) for b in self.data.buckets if b[0] % 16 or b[1] % 16]
        if bad:
            raise ConfigError(f"data.buckets: {bad} not multiples of 16 (the VAE's 8x times the DiT's 2x2 patches)")


def load_train_job(path: str | None, overrides: list[str] = ()) -> TrainJob:
    return load(TrainJob, path, list(overrides))

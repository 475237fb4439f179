"""The curation job: what to read, how to cut and filter, where to write. Loaded from a job YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cinema_model.typed_config import ConfigError, load


@dataclass
class StorageConfig:
    """Object storage options. Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from here."""

    endpoint_url: str | None = None  # any S3-compatible endpoint; None means AWS
    region: str | None = None
    anon: bool = False


@dataclass
class DetectorConfig:
    kind: Literal["adaptive", "content", "threshold", "histogram", "hash"] = "adaptive"
    args: dict[str, float | int | str | bool] = field(default_factory=dict)  # the PySceneDetect detector's arguments


@dataclass
class ScenesConfig:
    # Several detectors combine their cuts, e.g. adaptive (hard cuts) + threshold (fades through black).
    detectors: list[DetectorConfig] = field(default_factory=lambda: [DetectorConfig()])
    min_scene_s: float = 0.5  # a cut this close to the previous cut or to the start is ignored
    analysis_width: int = 256  # frames are decoded once and downscaled to this width for detection and motion
    min_clip_s: float = 2.0  # shorter scenes are dropped
    max_clip_s: float = 10.0  # longer scenes are split evenly into parts no longer than this

    def validate(self) -> None:
        if self.analysis_width < 16:
            raise ConfigError("scenes.analysis_width must be >= 16")
        if not self.detectors:
            raise ConfigError("scenes.detectors: at least one detector is needed")
        if not 0 < self.min_clip_s <= self.max_clip_s:
            raise ConfigError("scenes: need 0 < min_clip_s <= max_clip_s")


@dataclass
class EncodeConfig:
    codec: str = "libx264"
    preset: str = "veryfast"
    crf: int = 23
    max_short_side: int | None = None  # resize so the short side is at most this (None keeps the size)
    fps: float | None = None  # resample to this frame rate (None keeps the source's average rate)
    threads: int = 1  # encoder threads per worker; workers already run in parallel

    def validate(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ConfigError("encode.crf must be within 0..51")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError("encode.fps must be > 0")


@dataclass
class FiltersConfig:
    """Thresholds only decide what is kept; every score is stored in the manifest either way."""

    min_width: int = 0
    min_height: int = 0
    min_motion: float = 0.0  # mean absolute frame difference at analysis size, 0..255
    max_motion: float | None = None


@dataclass
class ShardsConfig:
    target_size_mb: float = 500.0  # a shard is closed once it reaches this size
    max_clips: int = 10_000  # ... or this many clips

    def validate(self) -> None:
        if self.target_size_mb <= 0 or self.max_clips <= 0:
            raise ConfigError("shards.target_size_mb and shards.max_clips must be > 0")


@dataclass
class RayConfig:
    address: str | None = None  # None starts a local Ray on 127.0.0.1; "auto" joins the cluster this runs on
    num_cpus: int | None = None  # local Ray only: CPUs to use (None = all)
    progress_interval_s: float = 5.0


@dataclass
class ReportConfig:
    sample_clips: int = 12  # clips shown on the contact sheet


@dataclass
class JobConfig:
    input: str = ""  # folder, glob, file, s3://bucket/prefix, http(s) URL, or a .txt list of URIs
    output: str = ""  # local folder or s3://bucket/prefix
    extensions: list[str] = field(default_factory=lambda: [".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"])
    limit: int | None = None  # process at most this many sources (after resume skips done ones)
    retry_errors: bool = False  # on rerun, retry sources that failed before instead of skipping them
    storage: StorageConfig = field(default_factory=StorageConfig)
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("input: no input given (set it in the job file or pass --input)")
        if not self.output:
            raise ConfigError("output: no output given (set it in the job file or pass --output)")


def load_job(path: str | None, overrides: list[str] = (), input: str | None = None, output: str | None = None) -> JobConfig:
    extra = {k: v for k, v in (("input", input), ("output", output)) if v is not None}
    return load(JobConfig, path, overrides, extra)

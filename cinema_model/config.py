"""The CINEMA model's configuration: typed dataclasses and the `tiny`, `mid`, `large` and `full` presets.

Frozen parts (MLLM, T5, VAE) are named by a hub id or a local folder and load through `from_pretrained`. Their
`arch` field repeats the checkpoint's architecture so that `summary` and the meta-device tests can build them
without the files; when it is None the architecture is read from the checkpoint's own config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.typed_config import ConfigError, apply_overrides, from_dict, to_dict

# The paper's instruction: keep each subject's identity from its reference image, natural motion, subjects blended
# into the scene, temporal and spatial coherence. The K subject images precede it in the same user turn.
INSTRUCTION = (
    "Generate a video from the reference images and the description. Keep the visual identity of each subject "
    "exactly as shown in its reference image, make the motion natural, blend the subjects into one coherent scene, "
    "and keep the video consistent in time and space. Description: {caption}"
)


@dataclass
class MllmConfig:
    path: str  # hub id or folder of a Qwen2-VL / Qwen2.5-VL checkpoint
    instruction: str = INSTRUCTION  # must contain "{caption}"
    arch: dict | None = None  # the checkpoint's config values with its model_type, to build it without the files

    def validate(self):
        if "{caption}" not in self.instruction:
            raise ValueError("mllm.instruction must contain '{caption}'")


@dataclass
class T5Config:
    path: str  # hub id or folder with a T5 encoder and its tokenizer
    max_length: int = 226  # CogVideoX's text length; also the AlignerNet's number of queries
    arch: dict | None = None  # model_type="t5" and T5Config values


@dataclass
class VaeConfig:
    path: str  # hub id or folder of a diffusers AutoencoderKLCogVideoX
    subfolder: str | None = None  # "vae" inside a full CogVideoX pipeline folder
    arch: dict | None = None  # AutoencoderKLCogVideoX kwargs


@dataclass
class AlignerConfig:
    """Kosmos-G AlignerNet: MLLM states -> width -> encoder -> learned queries through a decoder -> T5 width."""

    width: int = 768
    heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    pretrained: str | None = None  # stage-1 AlignerNet weights (safetensors); None = random init (ablation d)


@dataclass
class DitConfig:
    """MM-DiT of the CogVideoX layout (diffusers `CogVideoXTransformer3DModel`, version 1.0 patching)."""

    heads: int = 48
    head_dim: int = 64
    layers: int = 42
    text_dim: int = 4096  # width of the conditioning tokens: T5's hidden size
    time_embed_dim: int = 512
    latent_channels: int = 16
    patch_size: int = 2
    mlp_ratio: int = 4
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_from: str | None = None  # diffusers CogVideoX transformer folder or hub id to convert weights from
    init_subfolder: str | None = None  # "transformer" inside a full CogVideoX pipeline folder

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    def validate(self):
        if self.head_dim % 16:
            raise ValueError("dit.head_dim must be a multiple of 16 (3D RoPE splits it 1/4, 3/8, 3/8 in rotary pairs)")


@dataclass
class FlowConfig:
    """Rectified flow: x_t = (1 - t) x0 + t noise, target velocity noise - x0, t ~ shifted logit-normal."""

    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # t -> shift t / (1 + (shift - 1) t): > 1 spends more steps near noise (large videos)
    condition_dropout: float = 0.1  # probability of an empty caption and no subjects, so CFG has an unconditional
    sample_steps: int = 50
    guidance: float = 6.0


@dataclass
class VideoConfig:
    # 1 + 8k frames: CogVideoX's VAE decodes its latents in pairs after the first three, so only an odd latent count
    # (1 + 4 * even) keeps each latent's frames in place; the paper's 45 (12 latents) would shift the first four
    # frames' latent into frames 4-9. 49 = 13 latents is CogVideoX's training length.
    num_frames: int = 49
    height: int = 480
    width: int = 720
    fps: int = 8

    def validate(self):
        if self.num_frames < 1 or (self.num_frames - 1) % 8:
            raise ValueError(f"video.num_frames={self.num_frames}: must be 1 + 8k (9, 17, ..., 49), an odd number of "
                             "latent frames, for the CogVideoX VAE to decode every frame in place")
        if self.height % 16 or self.width % 16:
            raise ValueError("video.height and video.width must be multiples of 16 (VAE 8x times patch 2)")


@dataclass
class AblationConfig:
    """The paper's ablations: (b) conditioning="t5"; (c) subject_tokens=False; (d) aligner_from_scratch: the
    cinema stage trains the AlignerNet from random weights, with no aligner.pretrained (the trainer refuses that
    unless it is named here)."""

    conditioning: Literal["mllm", "t5"] = "mllm"
    subject_tokens: bool = True
    aligner_from_scratch: bool = False


@dataclass
class CinemaConfig:
    mllm: MllmConfig
    t5: T5Config
    vae: VaeConfig
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    dit: DitConfig = field(default_factory=DitConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    frozen_dtype: Literal["float32", "bfloat16"] = "bfloat16"  # MLLM, T5 and VAE; trained parts stay float32

    def validate(self):
        if self.dit.patch_size != 2:
            raise ValueError("dit.patch_size must be 2 (the layout of CogVideoX 1.0 checkpoints)")


def _frozen_parts(root: str) -> dict:
    return dict(mllm=dict(path=f"{root}/qwen2vl"), t5=dict(path=f"{root}/t5", max_length=16),
                vae=dict(path=f"{root}/vae"))


def _tiny(root: str) -> dict:
    return dict(
        **_frozen_parts(root),
        aligner=dict(width=32, heads=2, encoder_layers=1, decoder_layers=1),
        dit=dict(heads=2, head_dim=16, layers=2, text_dim=32, time_embed_dim=32),
        flow=dict(sample_steps=2, guidance=2.0),
        video=dict(num_frames=9, height=32, width=32),
        frozen_dtype="float32",
    )


def _mid(root: str) -> dict:
    # Tiny frozen parts, a mid-size trained path: what CPU benchmarks and quick experiments need.
    return dict(
        **_frozen_parts(root),
        aligner=dict(width=256, heads=4, encoder_layers=2, decoder_layers=2),
        dit=dict(heads=8, head_dim=64, layers=8, text_dim=32, time_embed_dim=256),
        flow=dict(sample_steps=4),
        video=dict(num_frames=17, height=128, width=128),
        frozen_dtype="float32",
    )


def _large(root: str) -> dict:
    # The mid preset with a DiT of about 1 B parameters (24 x 64 heads, 28 blocks): big enough that how the trained
    # parts are built and loaded shows in host memory (benchmarks/memory_bench.py), small enough for CPU ranks.
    return {**_mid(root), "dit": dict(heads=24, head_dim=64, layers=28, text_dim=32, time_embed_dim=512)}


def _full(_: str) -> dict:
    return dict(
        mllm=dict(path="Qwen/Qwen2-VL-7B-Instruct", arch=dict(
            model_type="qwen2_vl",
            text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                             num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
                             rms_norm_eps=1e-6, tie_word_embeddings=False,
                             rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24])),
            vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        )),
        t5=dict(path="google/t5-v1_1-xxl", arch=dict(
            model_type="t5", vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        )),
        vae=dict(path="THUDM/CogVideoX-5b", subfolder="vae", arch=dict(scaling_factor=0.7)),
        dit=dict(init_from="THUDM/CogVideoX-5b", init_subfolder="transformer"),
        flow=dict(shift=3.0),
    )


PRESETS = {"tiny": _tiny, "mid": _mid, "large": _large, "full": _full}


def preset(name: str, checkpoints: str | None = None, overrides: list[str] = ()) -> CinemaConfig:
    """A preset with ``key=value`` overrides; ``checkpoints`` is the folder of tiny frozen parts that the tiny and
    mid presets load (``python -m tiny_models OUT_DIR`` writes one); the full preset loads real models."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (one of {', '.join(PRESETS)})")
    if checkpoints is None and name != "full":
        raise ConfigError(f"preset {name!r} needs the folder of its tiny frozen parts (model.checkpoints, or "
                          "--checkpoints): python -m tiny_models OUT_DIR writes one")
    return from_dict(CinemaConfig, apply_overrides(PRESETS[name](checkpoints), list(overrides)))


def replace(cfg: CinemaConfig, **changes: dict) -> CinemaConfig:
    """A copy of ``cfg`` with sections updated, e.g. ``replace(cfg, ablation=dict(conditioning="t5"))``."""
    data = to_dict(cfg)
    for section, values in changes.items():
        data[section].update(values)
    return from_dict(CinemaConfig, data)


def latent_frames(num_frames: int) -> int:
    """Latent frames of the CogVideoX VAE: the first frame alone, then one per 4 (49 -> 13)."""
    return (num_frames - 1) // 4 + 1


"""CinemaModel: the frozen encoders, the AlignerNet and the MM-DiT, with the training losses and the sampler.

A training batch is a plain dict:
    "video":         (B, F, 3, H, W) float in [-1, 1]        (or "latents": (B, T, C, H/8, W/8) VAE latents)
    "captions":      list of B strings
    "subjects":      (B, K, 3, H, W) float in [-1, 1], zero-padded to the batch's largest K (0..6)
    "num_subjects":  (B,) long, the real subject count of each sample
Precomputed features (``training.precompute``) replace the encoders' inputs with their outputs: "latents",
"subject_latents" (B, K, C, H/8, W/8) in place of "subjects", and "text_states" (B, L, D) with "text_mask" (B, L),
the conditioning encoder's states of each sample's caption and subject images, plus "uncond_states" (L0, D) and
"uncond_mask" (L0,): its states of the empty prompt with no images, which condition dropout puts in.

Stages (ARCHITECTURE.md): "aligner" builds MLLM + T5 + AlignerNet for AlignerNet pre-training on captions;
"cinema" builds the conditioning encoder(s), AlignerNet, VAE and DiT for joint training and generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from cinema_model.aligner import AlignerNet, alignment_loss
from cinema_model.config import CinemaConfig, latent_frames
from cinema_model.dit import CinemaDiT
from cinema_model.flow import add_noise, euler_sample, sample_timesteps, velocity_loss
from cinema_model.frozen import hf_config, torch_dtype
from cinema_model.initial_weights import materialize
from cinema_model.mllm import MllmEncoder
from cinema_model.subjects import presence_mask, to_pil
from cinema_model.text_encoder import T5TextEncoder
from cinema_model.vae import VideoVae
from cinema_model.weights import check_no_buffers
from common.typed_config import ConfigError

Stage = Literal["aligner", "cinema"]


class CinemaModel(nn.Module):
    """Frozen parts: ``mllm``, ``t5``, ``vae``. Trained parts: ``aligner``, ``dit`` (``dit.blocks`` is the
    list to wrap per block). A part the stage or the ablation does not use is None."""

    def __init__(self, cfg: CinemaConfig, stage: Stage = "cinema", weights: bool = True, *,
                 device: torch.device | str | None = None, trained_on_meta: bool = False, seed: int | None = None,
                 encoders: bool = True, mllm_hidden_size: int | None = None):
        """Frozen parts load once, in ``cfg.frozen_dtype``, onto ``device`` (default: torch's default device). The
        trained parts are always built on the meta device; then either ``initial_weights.materialize`` gives them
        storage on ``device`` and their initial values at once (a plain build), or, with ``trained_on_meta``, they
        wait on the meta device: to be sharded (``training.parallelize``) and filled shard by shard
        (``training.materialize``), or materialised later (generate, with its file of trained weights).

        ``weights=False`` builds every part from its architecture only, with random weights: under
        ``with torch.device("meta")`` nothing is allocated at all (parameter counts, summaries).
        ``seed`` keys the trained parts' random init (``cinema_model.weights``); None draws it from
        torch's global generator, so ``torch.manual_seed`` before the build fixes it.
        ``encoders=False`` builds no MLLM, T5 or VAE, for training on precomputed features (module docstring); the
        AlignerNet then takes ``mllm_hidden_size`` (the features' width) or the MLLM config's."""
        super().__init__()
        self.cfg, self.stage = cfg, stage
        device = torch.device(device) if device is not None else torch.get_default_device()
        self.with_weights = weights  # False: no trained part reads stored initial weights either
        self.init_seed = int(torch.randint(0, 2**62, (1,), device="cpu")) if seed is None else seed
        on_meta = device.type == "meta"
        load, dtype = weights and not on_meta, torch_dtype(cfg.frozen_dtype)
        use_mllm = stage == "aligner" or cfg.ablation.conditioning == "mllm"
        use_t5 = stage == "aligner" or cfg.ablation.conditioning == "t5"
        self.mllm = MllmEncoder.load(cfg.mllm, dtype, load, device) if use_mllm and encoders else None
        self.t5 = T5TextEncoder.load(cfg.t5, dtype, load, device) if use_t5 and encoders else None
        self.vae = VideoVae.load(cfg.vae, dtype, load, device) if stage == "cinema" and encoders else None
        width = self.mllm.hidden_size if self.mllm is not None else mllm_hidden_size
        if use_mllm and width is None:
            width = hf_config(cfg.mllm.arch, cfg.mllm.path).text_config.hidden_size
        with torch.device("meta"):
            self.aligner = (AlignerNet(cfg.aligner, width, cfg.dit.text_dim, cfg.t5.max_length)
                            if use_mllm else None)
            self.dit = CinemaDiT(cfg.dit) if stage == "cinema" else None
        self._check_widths()
        for name, part in self.trainable_parts().items():
            check_no_buffers(part, name)
        if not (trained_on_meta or on_meta):
            materialize(self, device)

    def _check_widths(self):
        if self.t5 is not None and self.t5.hidden_size != self.cfg.dit.text_dim:
            raise ConfigError(f"dit.text_dim={self.cfg.dit.text_dim} but the T5 encoder's width is "
                              f"{self.t5.hidden_size}: the DiT reads T5-space tokens")
        if self.vae is not None and self.vae.latent_channels != self.cfg.dit.latent_channels:
            raise ConfigError(f"dit.latent_channels={self.cfg.dit.latent_channels} but the VAE has "
                              f"{self.vae.latent_channels}")

    # -- frozen / trainable split -------------------------------------------------------------------------------

    def frozen_parts(self) -> dict[str, nn.Module]:
        return {n: m for n, m in (("mllm", self.mllm), ("t5", self.t5), ("vae", self.vae)) if m is not None}

    def trainable_parts(self) -> dict[str, nn.Module]:
        return {n: m for n, m in (("aligner", self.aligner), ("dit", self.dit)) if m is not None}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable_parts().values() for p in m.parameters()]

    def train(self, mode: bool = True) -> "CinemaModel":
        super().train(mode)
        for part in self.frozen_parts().values():
            part.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.trainable_parameters()[0].device

    # -- consolidated weights of the trained parts (what `generate` loads) ------------------------------------

    def load_trainable(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        for name, part in self.trainable_parts().items():
            prefix = f"{name}."
            part.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    # -- conditioning -------------------------------------------------------------------------------------------

    def condition(self, captions: list[str], subjects: torch.Tensor, num_subjects: torch.Tensor) -> torch.Tensor:
        """The DiT's conditioning tokens (B, max_length, text_dim): the aligned MLLM states of the prompt and the
        subject images, or T5 features of the caption in the "MLLM replaced by T5" ablation."""
        return self.condition_from_states(*encode_condition(self.cfg, self.mllm, self.t5, captions, subjects,
                                                            num_subjects))

    def condition_from_states(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The DiT's conditioning tokens from the conditioning encoder's states (``encode_condition``)."""
        if self.cfg.ablation.conditioning == "t5":
            return states.float()
        return self.aligner(states.float(), mask)

    def subject_latents(self, subjects: torch.Tensor, num_subjects: torch.Tensor):
        """(latents (B, K, C, h, w), present (B, K)) of the subject images, or (None, None) without subject tokens."""
        if not self.cfg.ablation.subject_tokens or subjects.shape[1] == 0:
            return None, None
        present = presence_mask(num_subjects, subjects.shape[1]).to(self.device)
        return self.vae.encode_images(subjects.to(self.device), present), present

    def _precomputed_subject_latents(self, latents: torch.Tensor, num_subjects: torch.Tensor):
        """``subject_latents`` from the subjects' precomputed latents (B, K, C, h, w): absent slots zero."""
        if not self.cfg.ablation.subject_tokens or latents.shape[1] == 0:
            return None, None
        present = presence_mask(num_subjects, latents.shape[1]).to(self.device)
        return latents.to(self.device).float() * present[:, :, None, None, None], present

    # -- losses -------------------------------------------------------------------------------------------------

    def loss(self, batch: dict, generators: list[torch.Generator] | None = None,
             timesteps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching loss of a training batch (module docstring); {"loss": scalar to backprop, "flow": its
        detached value}. Subject latents enter clean and are never part of the prediction or the loss.

        ``generators`` (one CPU generator per sample) draw each sample's condition dropout, timestep and noise, so
        a sample's randomness depends on its generator only, not on which rank or batch it lands in.
        ``timesteps`` (B,) fixes each sample's t and conditions every sample: the validation loss."""
        x0 = batch["latents"].to(self.device) if "latents" in batch else self.vae.encode(batch["video"].to(self.device))
        b = x0.shape[0]
        gens = generators or [None] * b
        if timesteps is None:
            drop = torch.cat([torch.rand(1, generator=g) for g in gens]) < self.cfg.flow.condition_dropout
            t = torch.cat([sample_timesteps(self.cfg.flow, 1, generator=g) for g in gens]).to(self.device)
        else:
            drop, t = torch.zeros(b, dtype=torch.bool), timesteps.float().to(self.device)
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0)
        captions = ["" if d else c for c, d in zip(batch["captions"], drop.tolist())]
        counts = batch["num_subjects"].cpu().masked_fill(drop, 0)

        if "text_states" in batch:  # precomputed features: the encoders' outputs, dropout applied here
            text = self.condition_from_states(*_drop_states(batch, drop.to(batch["text_states"].device)))
            subjects, present = self._precomputed_subject_latents(batch["subject_latents"], counts)
        else:
            text = self.condition(captions, batch["subjects"], counts)
            subjects, present = self.subject_latents(batch["subjects"], counts)
        pred = self.dit(add_noise(x0, noise, t), t, text, subjects, present)
        loss = velocity_loss(pred, x0, noise)
        return {"loss": loss, "flow": loss.detach()}

    def aligner_loss(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Stage-1 loss: the AlignerNet maps the MLLM's states of the prompt (no images) onto T5 features of the
        caption; {"loss", "mse", "cosine"}."""
        states, mask = self.mllm(captions, [[] for _ in captions])
        return alignment_loss(self.aligner(states.float(), mask), self.t5(captions))

    # -- sampling -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_latents(self, captions: list[str], subjects: torch.Tensor, num_subjects: torch.Tensor, seed: int = 0,
                       steps: int | None = None, guidance: float | None = None,
                       batched_cfg: bool = True) -> torch.Tensor:
        """Latents (B, T, C, h, w) float32 of the configured video size; the DiT runs in its parameters' dtype.
        The unconditional branch of CFG has an empty caption and no subjects, as trained with condition dropout.
        ``batched_cfg`` runs both branches as one forward of batch 2B, the unconditional half's subject slots
        masked out of attention (as if absent); False runs two forwards (half the activation memory)."""
        video, flow = self.cfg.video, self.cfg.flow
        steps, guidance = steps or flow.sample_steps, flow.guidance if guidance is None else guidance
        b = len(captions)
        shape = (b, latent_frames(video.num_frames), self.cfg.dit.latent_channels, video.height // 8, video.width // 8)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        dtype = next(self.dit.parameters()).dtype
        cond = self.condition(captions, subjects, num_subjects).to(dtype)
        subject_latents, present = self.subject_latents(subjects, num_subjects)
        if subject_latents is not None:
            subject_latents = subject_latents.to(dtype)
        uncond = (None if guidance == 1 else
                  self.condition([""] * b, subjects[:, :0], torch.zeros_like(num_subjects)).to(dtype))

        if uncond is not None and batched_cfg:
            text = torch.cat([cond, uncond])
            both = (None, None) if subject_latents is None else (
                torch.cat([subject_latents, torch.zeros_like(subject_latents)]),
                torch.cat([present, torch.zeros_like(present)]))

            def velocity(x, t):
                return self.dit(torch.cat([x, x]).to(dtype), torch.cat([t, t]), text, *both).chunk(2)
        else:
            def velocity(x, t):
                x = x.to(dtype)
                v_cond = self.dit(x, t, cond, subject_latents, present)
                return v_cond, None if uncond is None else self.dit(x, t, uncond)

        return euler_sample(velocity, noise, steps, flow.shift, guidance)

    @torch.no_grad()
    def generate(self, captions: list[str], subjects: torch.Tensor, num_subjects: torch.Tensor, seed: int = 0,
                 steps: int | None = None, guidance: float | None = None, batched_cfg: bool = True) -> torch.Tensor:
        """Videos (B, F, 3, H, W) in [-1, 1] at the configured size (``sample_latents``, then the VAE). Same
        seed, same video."""
        return self.vae.decode(self.sample_latents(captions, subjects, num_subjects, seed, steps, guidance,
                                                   batched_cfg))


def encode_condition(cfg: CinemaConfig, mllm: MllmEncoder | None, t5: T5TextEncoder | None, captions: list[str],
                     subjects: torch.Tensor, num_subjects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioning encoder's (states (B, L, D), mask (B, L)) of the prompts and the first num_subjects[i]
    subject images (B, K, 3, H, W) in [-1, 1]: the MLLM's, or T5's padded features with an all-true mask in the
    T5 ablation. What ``CinemaModel.condition`` aligns, and what ``training.precompute`` stores."""
    if cfg.ablation.conditioning == "t5":
        states = t5(captions)
        return states, torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
    images = [to_pil(subjects[i, :n]) for i, n in enumerate(num_subjects.tolist())]
    return mllm(captions, images)


def _drop_states(batch: dict, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's precomputed (states, mask), with the unconditional states (the empty prompt, no images) in the
    rows condition dropout drops, all padded to one length on the right (the AlignerNet has no positions: it
    reads the real tokens through the mask, wherever they sit)."""
    states, mask = batch["text_states"], batch["text_mask"].bool()
    if not drop.any():
        return states, mask
    u_states, u_mask = batch["uncond_states"].to(states), batch["uncond_mask"].to(mask)
    length = max(states.shape[1], u_states.shape[0])
    padded, padded_mask = states.new_zeros(len(states), length, states.shape[2]), mask.new_zeros(len(mask), length)
    padded[:, :states.shape[1]], padded_mask[:, :mask.shape[1]] = states, mask
    padded[drop], padded_mask[drop] = 0, False
    padded[drop, :len(u_states)], padded_mask[drop, :len(u_mask)] = u_states, u_mask
    return padded, padded_mask

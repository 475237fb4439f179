"""CinemaModel: the frozen encoders, the AlignerNet and the MM-DiT, with the training losses and the sampler.

A training batch is a plain dict:
    "video":         (B, F, 3, H, W) float in [-1, 1]        (or "latents": (B, T, C, H/8, W/8) VAE latents)
    "captions":      list of B strings
    "subjects":      (B, K, 3, H, W) float in [-1, 1], zero-padded to the batch's largest K (0..6)
    "num_subjects":  (B,) long, the real subject count of each sample

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
from cinema_model.frozen import torch_dtype
from cinema_model.mllm import MllmEncoder
from cinema_model.subjects import presence_mask, to_pil
from cinema_model.text_encoder import T5TextEncoder
from cinema_model.vae import VideoVae
from common.typed_config import ConfigError

Stage = Literal["aligner", "cinema"]


class CinemaModel(nn.Module):
    """Frozen parts: ``mllm``, ``t5``, ``vae``. Trained parts: ``aligner``, ``dit`` (``dit.blocks`` is the
    list to wrap per block). A part the stage or the ablation does not use is None."""

    def __init__(self, cfg: CinemaConfig, stage: Stage = "cinema", weights: bool = True):
        """``weights=False`` builds every part from its architecture only, with random weights: for a meta-device
        build (``with torch.device("meta")``) or a model that a checkpoint will fill."""
        super().__init__()
        self.cfg, self.stage = cfg, stage
        dtype = torch_dtype(cfg.frozen_dtype)
        use_mllm = stage == "aligner" or cfg.ablation.conditioning == "mllm"
        use_t5 = stage == "aligner" or cfg.ablation.conditioning == "t5"
        self.mllm = MllmEncoder.load(cfg.mllm, dtype, weights) if use_mllm else None
        self.t5 = T5TextEncoder.load(cfg.t5, dtype, weights) if use_t5 else None
        self.vae = VideoVae.load(cfg.vae, dtype, weights) if stage == "cinema" else None
        self.aligner = (AlignerNet(cfg.aligner, self.mllm.hidden_size, cfg.dit.text_dim, cfg.t5.max_length)
                        if use_mllm else None)
        self.dit = CinemaDiT(cfg.dit) if stage == "cinema" else None
        self._check_widths()
        if weights:
            self._load_initial_weights()

    def _check_widths(self):
        if self.t5 is not None and self.t5.hidden_size != self.cfg.dit.text_dim:
            raise ConfigError(f"dit.text_dim={self.cfg.dit.text_dim} but the T5 encoder's width is "
                              f"{self.t5.hidden_size}: the DiT reads T5-space tokens")
        if self.vae is not None and self.vae.latent_channels != self.cfg.dit.latent_channels:
            raise ConfigError(f"dit.latent_channels={self.cfg.dit.latent_channels} but the VAE has "
                              f"{self.vae.latent_channels}")

    def _load_initial_weights(self):
        from safetensors.torch import load_file

        from cinema_model.convert import load_cogvideox_into

        if self.aligner is not None and self.cfg.aligner.pretrained:
            # A bare AlignerNet state dict, or the trained-weights file of an `aligner` training run.
            state = load_file(self.cfg.aligner.pretrained)
            self.aligner.load_state_dict({k.removeprefix("aligner."): v for k, v in state.items()})
        if self.dit is not None and self.cfg.dit.init_from:
            load_cogvideox_into(self.dit, self.cfg.dit.init_from, self.cfg.dit.init_subfolder)

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

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, part in self.trainable_parts().items() for k, v in part.state_dict().items()}

    def save_trainable(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}, str(path))

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
        if self.cfg.ablation.conditioning == "t5":
            return self.t5(captions).float()
        images = [to_pil(subjects[i, :n]) for i, n in enumerate(num_subjects.tolist())]
        states, mask = self.mllm(captions, images)
        return self.aligner(states.float(), mask)

    def subject_latents(self, subjects: torch.Tensor, num_subjects: torch.Tensor):
        """(latents (B, K, C, h, w), present (B, K)) of the subject images, or (None, None) without subject tokens."""
        if not self.cfg.ablation.subject_tokens or subjects.shape[1] == 0:
            return None, None
        present = presence_mask(num_subjects, subjects.shape[1]).to(self.device)
        return self.vae.encode_images(subjects.to(self.device), present), present

    # -- losses -------------------------------------------------------------------------------------------------

    def loss(self, batch: dict, generators: list[torch.Generator] | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching loss of a training batch (module docstring); {"loss": scalar to backprop, "flow": its
        detached value}. Subject latents enter clean and are never part of the prediction or the loss.

        ``generators`` (one CPU generator per sample) draw each sample's condition dropout, timestep and noise, so
        a sample's randomness depends on its generator only, not on which rank or batch it lands in."""
        x0 = batch["latents"].to(self.device) if "latents" in batch else self.vae.encode(batch["video"].to(self.device))
        b = x0.shape[0]
        gens = generators or [None] * b
        drop = torch.cat([torch.rand(1, generator=g) for g in gens]) < self.cfg.flow.condition_dropout
        t = torch.cat([sample_timesteps(self.cfg.flow, 1, generator=g) for g in gens]).to(self.device)
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(x0)
        captions = ["" if d else c for c, d in zip(batch["captions"], drop.tolist())]
        counts = batch["num_subjects"].cpu().masked_fill(drop, 0)

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
    def generate(self, captions: list[str], subjects: torch.Tensor, num_subjects: torch.Tensor, seed: int = 0,
                 steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        """Videos (B, F, 3, H, W) in [-1, 1] at the configured size. The unconditional branch of CFG has an
        empty caption and no subjects, as trained with condition dropout. Same seed, same video."""
        video, flow = self.cfg.video, self.cfg.flow
        steps, guidance = steps or flow.sample_steps, flow.guidance if guidance is None else guidance
        b = len(captions)
        shape = (b, latent_frames(video.num_frames), self.cfg.dit.latent_channels, video.height // 8, video.width // 8)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        cond = self.condition(captions, subjects, num_subjects)
        subject_latents, present = self.subject_latents(subjects, num_subjects)
        uncond = None if guidance == 1 else self.condition([""] * b, subjects[:, :0], torch.zeros_like(num_subjects))

        def velocity(x, t):
            v_cond = self.dit(x, t, cond, subject_latents, present)
            return v_cond, None if uncond is None else self.dit(x, t, uncond)

        latents = euler_sample(velocity, noise, steps, flow.shift, guidance)
        return self.vae.decode(latents)

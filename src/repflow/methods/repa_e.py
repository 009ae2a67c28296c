"""REPA-E (Leng, Singh, ..., Xie 2025, "REPA-E: Unlocking VAE for End-to-End Tuning with Latent Diffusion
Transformers"; End2End-Diffusion/REPA-E): a VAE and a SiT trained together, the VAE tuned by the REPA loss.

One training step of the official ``train_repae.py``, three optimisers (AdamW each, gradients clipped each),
in this order; ``z = mean + std * eps`` is the VAE's posterior draw of the images, ``BN`` the batch norm of
latents (``latent_norm``), t and the flow noise drawn once and shared by the two REPA evaluations:

1. VAE: ``L1(x, x^) + LPIPS(x, x^) + 1e-6 KL + 0.1 (-D(x^)) + 1.5 REPA(SiT(BN_running(z)))``: the SiT and its
   projector frozen and in eval mode (no label dropout), the latent normalised by the running statistics, so
   the REPA gradient reaches the VAE's encoder through ``z`` (the decoder only through the reconstruction);
2. discriminator (taming's PatchGAN, in train mode throughout as theirs): the hinge loss on ``x`` and the
   step's reconstruction ``x^`` (made before the VAE's update, detached);
3. SiT: ``flow(BN_batch(sg(z))) + 0.5 REPA``, on the same ``z`` detached: the diffusion loss never reaches
   the VAE (the paper's stop-gradient: without it the latent collapses to what is easiest to denoise); the
   batch statistics move the running ones (momentum 0.1).

The running statistics (EMA'd with the SiT, as the official ``update_ema`` does its BN buffers) are the tuned
VAE's latent statistics: sampling decodes with them, ``repflow export RUN --vae DIR`` writes the VAE as a
diffusers ``AutoencoderKL`` with them as ``latents_mean`` / ``latents_std`` (README "REPA-E").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..codecs.vae import VAECodec
from ..config import Config, ConfigError, checked, nonnegative, positive, replace, unit
from ..flow.loss import FlowDraw, LossOutput
from ..registry import METHODS
from ..runtime.precision import full_precision
from .base import MethodEnv, Phase, TrainBatch
from .decoder_losses import hinge_d_loss
from .discriminator import PatchDiscriminator
from .flow import FlowMethod, FlowMethodConfig
from .latent_norm import LatentBatchNorm
from .lpips import lpips_for


@dataclass(frozen=True)
class RepaEConfig(FlowMethodConfig):
    """The official defaults: ``train_repae.py``'s argparse and ``configs/l1_lpips_kl_gan.yaml``. The SiT's REPA
    weight is ``repa.weight`` (their ``--proj-coeff`` 0.5); its optimiser is the ``train`` section."""

    kind: str = "repa_e"
    vae_init: Literal["pretrained", "scratch"] = "pretrained"  # scratch: codec.path's architecture, new weights
    vae_lr: float = checked(1e-4, positive)
    align_weight: float = checked(1.5, nonnegative)  # REPA in the VAE's loss (--vae-align-proj-coeff)
    l1_weight: float = checked(1.0, nonnegative)  # reconstruction_weight, L1 in [-1, 1] units
    lpips: str = ""  # LPIPS weights as for rae_decoder (lin layers or one save_lpips file); "": off, said once
    lpips_vgg: str = ""
    lpips_weight: float = checked(1.0, nonnegative)
    # the official LPIPS maps its inputs from [0, 1] (x * 2 - 1, loss/lpips.py) but train_repae.py hands it images
    # in [-1, 1]: it measures 2x - 1 against 2x^ - 1. True reproduces that; False: LPIPS of the images as they are
    lpips_official_range: bool = True
    kl_weight: float = checked(1e-6, nonnegative)  # on sum(KL) / batch
    gan_weight: float = checked(0.1, nonnegative)  # discriminator_weight x discriminator_factor; 0: no critic
    disc_start: int = checked(0, nonnegative)  # the critic and the VAE's GAN term from this step
    disc_lr: float = checked(1e-4, positive)
    disc_weights: str = ""  # a PatchGAN state dict (the official *-discriminator-ckpt.pt); "": fresh
    disc_width: int = checked(64, positive)
    disc_layers: int = checked(3, positive)
    bn_momentum: float = checked(0.1, unit)
    bn_eps: float = checked(1e-4, positive)


@METHODS.register("repa_e", RepaEConfig)
class RepaEMethod(FlowMethod):
    ema_networks: ClassVar[tuple[str, ...]] = ("model", "latent_norm")
    needs_images: ClassVar[bool] = True
    encodes_pixels: ClassVar[bool] = True

    def __init__(self, cfg: Config, env: MethodEnv):
        super().__init__(cfg, env)  # the SiT ("model") and the REPA projectors ("objective")
        m, codec = cfg.method, env.codec
        if not isinstance(codec, VAECodec) or codec.autoencoder.name != "AutoencoderKL":
            what = codec.autoencoder.name if isinstance(codec, VAECodec) else f"codec.kind={cfg.codec.kind}"
            raise ConfigError(f"method.kind=repa_e tunes a diffusers AutoencoderKL (codec.kind=vae); got {what}")
        self.add_network("vae", codec.load(pretrained=m.vae_init == "pretrained").to(env.device).train())
        norm = self.add_network("latent_norm", LatentBatchNorm(cfg.model.in_channels, m.bn_eps, m.bn_momentum))
        if m.vae_init == "pretrained":  # the official init_bn: the VAE's latent statistics (codec.stats / config)
            shift, scale = codec.normalisation
            norm.set_statistics(shift, torch.as_tensor(scale, dtype=torch.float64) ** -2)
        norm.to(env.device)
        if m.gan_weight > 0:
            if cfg.data.resolution < 3 * 2**m.disc_layers:  # each stride-2 layer halves, the last two take 1 each
                raise ConfigError(f"method.disc_layers={m.disc_layers} needs images of at least "
                                  f"{3 * 2**m.disc_layers} px (data.resolution={cfg.data.resolution})")  # fmt: skip
            disc = PatchDiscriminator(codec.in_channels, m.disc_width, m.disc_layers)
            if m.disc_weights:
                load_discriminator(disc, m.disc_weights)
            self.add_network("disc", disc.to(env.device))
        self._lpips = [lp] if (lp := lpips_for(m, env.device)) else []
        # z and x^ of each micro-batch, from the VAE's step to the critic's and the SiT's (made before the
        # VAE's update, as the official step reuses them); emptied after every step
        self._held: dict[int, tuple[Tensor, Tensor]] = {}

    def phases(self) -> list[Phase]:
        m, t = self.cfg.method, self.cfg.train
        phases = [Phase("vae", ("vae",), replace(t, lr=m.vae_lr))]
        if m.gan_weight > 0:
            phases.append(Phase("disc", ("disc",), replace(t, lr=m.disc_lr), start_step=m.disc_start))
        return [*phases, Phase("main", ("model", "objective"), t)]

    def describe(self) -> str:
        m = self.cfg.method
        vae = (f"L1 {m.l1_weight:g}, LPIPS {m.lpips_weight * bool(self._lpips):g}, KL {m.kl_weight:g}, "
               f"GAN {m.gan_weight:g}, REPA {m.align_weight:g}")  # fmt: skip
        return f"repa_e ({m.vae_init} VAE: {vae}; SiT: flow + REPA {self.cfg.repa.weight:g}; latent batch norm)"

    # -- one step ---------------------------------------------------------------------------------------------
    def draw(self, batch: TrainBatch, n: int, generator: torch.Generator | None) -> FlowDraw:
        c = self.cfg.model
        shape = (c.in_channels, c.input_size, c.input_size)
        draw = self.flow.draw({"x": shape}, n, generator, batch.x.device)
        draw.eps["posterior"] = torch.randn((n, *shape), generator=generator, device=batch.x.device)
        return draw

    def forward(self, batch: TrainBatch, draw: FlowDraw, phase: str = "main", step: int = 0) -> LossOutput:
        if phase == "vae":
            return self.vae_loss(batch, draw, step)
        z, x_hat = self._held[id(batch)]
        if phase == "disc":
            self.disc.train()
            real, fake = self.disc(full_precision(batch.x)), self.disc(full_precision(x_hat))  # real first, as theirs
            loss = hinge_d_loss(real, fake)
            return LossOutput(total=loss, terms={"d_hinge": loss, "d_real": real.mean().detach(),
                                                 "d_fake": fake.mean().detach()})  # fmt: skip
        x = self.latent_norm(z, batch_statistics=True)  # REPA-E's stop-gradient: z is detached
        return super().forward(TrainBatch(x, batch.y, batch.features), draw)

    def vae_loss(self, batch: TrainBatch, draw: FlowDraw, step: int) -> LossOutput:
        m, images = self.cfg.method, batch.x
        posterior = self.vae.encode(images).latent_dist
        z = posterior.mean + posterior.std * draw.eps["posterior"].to(posterior.mean.dtype)  # (B, C, h, w)
        x_hat = self.vae.decode(z).sample
        self._held[id(batch)] = (z.detach(), x_hat.detach())
        terms = {"l1": (full_precision(images) - full_precision(x_hat)).abs().mean()}
        total = m.l1_weight * terms["l1"]
        if self._lpips:
            a, b = (2 * images - 1, 2 * x_hat - 1) if m.lpips_official_range else (images, x_hat)
            terms["lpips"] = self._lpips[0](a, b).mean()
            total = total + m.lpips_weight * terms["lpips"]
        terms["kl"] = full_precision(posterior.kl()).sum() / images.shape[0]
        total = total + m.kl_weight * terms["kl"]
        if m.gan_weight > 0 and step >= m.disc_start:
            self.disc.train()
            terms["gan"] = -self.disc(full_precision(x_hat)).mean()
            total = total + m.gan_weight * terms["gan"]
        terms["align"] = self.vae_alignment(batch, z, draw)
        return LossOutput(total=total + m.align_weight * terms["align"], terms=terms)

    def vae_alignment(self, batch: TrainBatch, z: Tensor, draw: FlowDraw) -> Tensor:
        """REPA of the SiT on ``z`` normalised by the running statistics, labels kept (the official SiT is in
        eval mode here). Its gradient reaches the SiT and the projector too; the loop discards it (each phase
        starts from zero gradients) where the official code freezes them: the same update."""
        x = self.latent_norm(z)
        kept = FlowDraw(draw.t, {"x": draw.eps["x"]}, torch.zeros_like(draw.drop))
        depth = self.cfg.repa.depth
        _, sample = self.flow(self.model, {"x": x}, batch.y, draw=kept, return_hidden=(depth,))
        return self.objective.terms["repa"].loss(batch, sample)["repa"][0]

    def after_step(self, step: int) -> None:
        self._held.clear()

    # -- config ---------------------------------------------------------------------------------------------
    @classmethod
    def resolve_static(cls, cfg: Config) -> Config:
        if not cfg.repa.enabled:
            raise ConfigError("method.kind=repa_e tunes the VAE with the REPA loss: set repa.enabled=true "
                              "(with a frozen encoder under encoders)")  # fmt: skip
        if cfg.reg.enabled:
            raise ConfigError("method.kind=repa_e trains the image stream only: set reg.enabled=false")
        if cfg.codec.kind not in ("vae", "sd_vae"):
            raise ConfigError(f"method.kind=repa_e tunes a diffusers AutoencoderKL: set codec.kind=vae, not "
                              f"{cfg.codec.kind}")  # fmt: skip
        if getattr(cfg.codec, "cache", ""):
            raise ConfigError("method.kind=repa_e trains the VAE, so cached latents go stale: unset codec.cache")
        return super().resolve_static(cfg)

    @classmethod
    def resume_key(cls, cfg: Config) -> dict[str, Any]:
        m = cfg.method
        disc = {"method.disc_width": m.disc_width, "method.disc_layers": m.disc_layers} if m.gan_weight > 0 else {}
        return {**super().resume_key(cfg), **disc}  # the VAE's shapes are checked as its weights load

    @classmethod
    def inference_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        """The SiT, the VAE (architecture from codec.path's config) and the latent statistics."""
        m = cfg.method
        vae = VAECodec(cfg.codec.path).load(pretrained=False)
        norm = LatentBatchNorm(cfg.model.in_channels, m.bn_eps, m.bn_momentum)
        return {**super().inference_networks(cfg), "vae": vae, "latent_norm": norm}

    @classmethod
    def run_codec(cls, cfg: Config, networks, device, vae: str = ""):
        """The tuned VAE with its batch-norm statistics (``vae``: other weights, as for any run)."""
        return super().run_codec(cfg, networks, device, vae) if vae else tuned_codec(cfg, networks, device)

    @classmethod
    def denoiser(cls, cfg: Config, networks, device: torch.device, codec=None):
        """Decodes with the run's VAE and its batch-norm statistics (``codec`` is ignored: the VAE trained)."""
        return super().denoiser(cfg, networks, device, tuned_codec(cfg, networks, device))

    @classmethod
    def reconstructor(cls, cfg: Config, networks, codec=None):
        """The run's VAE, posterior mean in, decode out (``repflow eval RUN --reconstruct``: PSNR, rFID)."""
        vae = networks["vae"]

        @torch.no_grad()
        def reconstruct(images: Tensor) -> Tensor:
            return vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)

        return reconstruct


def tuned_codec(cfg: Config, networks, device: torch.device | str = "cpu") -> VAECodec:
    """A frozen ``vae`` codec of a REPA-E run's VAE, normalising by its latent batch norm's statistics."""
    mean, std = networks["latent_norm"].mean_std()
    shape = (-1, 1, 1)
    return VAECodec(cfg.codec.path, vae=networks["vae"], normalisation=(mean.view(shape), 1.0 / std.view(shape)),
                    device=device, precision=cfg.codec.precision, chunk=cfg.codec.chunk)  # fmt: skip


def load_discriminator(disc: PatchDiscriminator, path: str) -> None:
    """A pretrained PatchGAN (the official ``save_vae_weights.py`` writes ``*-discriminator-ckpt.pt``)."""
    from ..encoders.dinov2 import read_state_dict

    state = read_state_dict(Path(path))
    try:
        disc.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:200]
        raise ConfigError(
            f"method.disc_weights '{path}' is not a PatchGAN of method.disc_width / disc_layers and "
            f"the images' channels ({first})"
        ) from err


__all__ = ["RepaEConfig", "RepaEMethod", "tuned_codec"]

"""Training RAE's decoder (stage 1 of RAE): two phases through the one loop.

- ``decoder``: L1 + LPIPS on the reconstruction of noise-augmented latents (``z + sigma n``, sigma ~ U(0, tau)
  per image, tau = 0.8: the decoder learns to ignore the error a diffusion model's latents will carry), plus,
  from ``gan_start``, the GAN term ``-D(DiffAug(x_hat))`` weighted by ``gan_weight`` times taming's adaptive
  weight ``||grad L_rec|| / ||grad L_gan||`` at the decoder's last layer (clamped);
- ``disc``: from ``disc_start``, the hinge loss of trainable heads on a frozen DINO ViT-S/8's tokens (RAE's
  discriminator; ``disc: encoder``: on the codec's encoder), DiffAug on real images and on a fresh decode of
  the clean latent by the just-updated decoder (``disc_fakes: noisy``: of the noise-augmented one).

The batch carries the unnormalised latent (``codec.kind: rae`` with no statistics) and the images. The
decoder is saved as ``decoder.safetensors`` (and its EMA copy); ``codec.decoder: RUN`` decodes with it, and
``repflow rae export`` writes it as a diffusers ``AutoencoderRAE``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..config import Config, ConfigError, MethodConfig, checked, nonnegative, replace, to_dict
from ..data.transforms import model_to_uint8
from ..flow.loss import LossOutput
from ..models.rae_decoder import DECODER_SIZES, decoder_for
from ..registry import METHODS
from .base import Draw, Method, MethodEnv, Phase, TrainBatch
from .decoder_losses import GANSettings, critic_loss, draw_gan_views, generator_gan, upgrade_gan
from .discriminator import build_discriminator, legacy_disc_name
from .lpips import lpips_for


@dataclass(frozen=True)
class RAEDecoderConfig(MethodConfig, GANSettings):
    kind: str = "rae_decoder"
    size: str = "XL"  # decoder ViT: T (tests, demos), S, B, L, XL
    latent_dim: int = checked(0, nonnegative)  # 0: the codec's (filled when training starts)
    grid: int = checked(0, nonnegative)  # latent tokens per side; 0: from the data and the codec
    noise_tau: float = checked(0.8, nonnegative)  # noise-augmented decoding: sigma ~ U(0, tau)
    l1_weight: float = checked(1.0, nonnegative)
    output: Literal["normalised", "pixels"] = "normalised"  # RAE: the encoder's normalised input; RAEv2: pixels
    positions: Literal["fixed", "learned"] = "fixed"  # learned: trained as the official stage 1 does

    def validate(self) -> None:
        if self.size not in DECODER_SIZES:
            raise ConfigError(f"config key 'method.size' must be one of {', '.join(DECODER_SIZES)}, got {self.size!r}")

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        return upgrade_gan(data, fakes="noisy")  # repflow 0.2 showed the critic noise-augmented decodes


@METHODS.register("rae_decoder", RAEDecoderConfig)
class RAEDecoderMethod(Method):
    ema_networks: ClassVar[tuple[str, ...]] = ("decoder",)
    needs_images: ClassVar[bool] = True
    preview_needs_data: ClassVar[bool] = True
    uses_model_section: ClassVar[bool] = False

    def __init__(self, cfg: Config, env: MethodEnv):
        super().__init__(cfg, env)
        codec = env.codec
        if getattr(codec, "name", "") != "rae":
            raise ConfigError("method.kind=rae_decoder trains the decoder of an RAE codec: set codec.kind=rae")
        if getattr(codec, "mean", None) is not None:
            raise ConfigError("train the decoder on unnormalised latents (as the official stage 1): unset codec.stats")
        m = cfg.method
        self.add_network("decoder", type(self).inference_networks(cfg)["decoder"])
        encoder = codec.encoder()
        self._encoder = [encoder]  # frozen, rebuilt from the config: not a network, not saved
        self._lpips = [lp] if (lp := lpips_for(m, env.device)) else []  # first: its note before a missing DINO
        if m.gan_weight > 0:
            self.add_network("disc", build_discriminator(m, encoder, env.device))

    @property
    def encoder(self):
        return self._encoder[0]

    def phases(self) -> list[Phase]:
        m = self.cfg.method
        decoder = Phase("decoder", ("decoder",), self.cfg.train)
        if m.gan_weight == 0:
            return [decoder]
        return [decoder, Phase("disc", ("disc",), replace(self.cfg.train, lr=m.disc_lr), start_step=m.disc_start)]

    def draw(self, batch: TrainBatch, n: int, generator: torch.Generator | None) -> Draw:
        dev = batch.x.device
        tensors = {
            "sigma": self.cfg.method.noise_tau * torch.rand(n, generator=generator, device=dev),
            "noise": torch.randn((n, *batch.x.shape[1:]), generator=generator, device=dev),
        }
        return Draw({**tensors, **draw_gan_views(n, generator, dev)})

    def reconstruct(self, z: Tensor, draw: Draw | None = None) -> Tensor:
        if draw is not None:  # noise-augmented decoding
            z = z + draw["sigma"].view(-1, 1, 1, 1) * draw["noise"]
        return self.decoder.images(z, self.encoder)

    def forward(self, batch: TrainBatch, draw: Draw, phase: str = "decoder", step: int = 0) -> LossOutput:
        m, x = self.cfg.method, batch.images
        if phase == "disc":  # after the decoder's update in this step: a fresh decode
            noisy = draw if m.disc_fakes == "noisy" else None
            loss, terms = critic_loss(self.disc, x, lambda: self.reconstruct(batch.x, noisy), draw.tensors, m.diffaug)
            return LossOutput(total=loss, terms=terms)
        x_hat = self.reconstruct(batch.x, draw)
        l1 = (x_hat - x).abs().mean() / 2  # in [0, 1] units, as the official L1
        terms = {"l1": l1}
        rec = m.l1_weight * l1
        if self._lpips:
            lp = self._lpips[0](x_hat, x).mean()
            terms["lpips"] = lp
            rec = rec + m.lpips_weight * lp
        total = rec
        if m.gan_weight > 0 and step >= m.gan_start:
            gan, logged = generator_gan(self.disc, x_hat, rec, self.decoder.last_layer, draw.tensors, m)
            terms.update(logged)
            total = total + gan
        return LossOutput(total=total, terms=terms)

    def preview(self, weights, batch: TrainBatch | None):
        """Originals (odd rows) over their reconstructions (even rows), from the EMA decoder."""
        if batch is None:
            return None
        dec = type(self).inference_networks(self.cfg)["decoder"]
        dec.load_state_dict(weights["decoder"])
        dec.to(batch.x.device).eval()
        n = min(len(batch), 8 * 8)
        recon = dec.images(batch.x[:n], self.encoder).clamp(-1, 1)
        rows = []
        for lo in range(0, n, 8):
            rows += [batch.images[lo : lo + 8], recon[lo : lo + 8]]
        return model_to_uint8(torch.cat(rows)).cpu(), 8

    def describe(self) -> str:
        m = self.cfg.method
        gan = (f"GAN {m.gan_weight} from step {m.gan_start} ({m.disc} discriminator from {m.disc_start}, "
               f"{m.disc_fakes} fakes)") if m.gan_weight else "no GAN"  # fmt: skip
        lp = "LPIPS" if self._lpips else "no LPIPS"
        return f"rae_decoder (ViT-{m.size} decoder, noise tau {m.noise_tau}; L1, {lp}, {gan})"

    @classmethod
    def inference_networks(cls, cfg: Config) -> dict[str, torch.nn.Module]:
        return {"decoder": decoder_for(cfg)}

    @classmethod
    def reconstructor(cls, cfg: Config, networks, codec=None):
        decoder = networks["decoder"]

        @torch.no_grad()
        def reconstruct(images: Tensor) -> Tensor:  # the unnormalised latent, as in training, without noise
            return decoder.images(codec.raw(images), codec.encoder(images.shape[-1])).clamp(-1, 1)

        return reconstruct

    @classmethod
    def resolve(cls, cfg: Config, env: MethodEnv) -> Config:
        enc = env.codec.encoder()
        grid = cfg.data.resolution // env.codec.factor
        m = cfg.method
        for key, have in (("latent_dim", enc.embed_dim), ("grid", grid)):
            given = getattr(m, key)
            if given and given != have:
                raise ConfigError(f"method.{key}={given} but the codec gives {have}; leave it at 0")
        return cfg.replace(method=dataclasses.replace(m, latent_dim=enc.embed_dim, grid=grid))

    @classmethod
    def legacy_name(cls, cfg: Config, name: str) -> str:
        return legacy_disc_name(name)

    @classmethod
    def resume_key(cls, cfg: Config) -> dict[str, Any]:
        m = cfg.method
        codec = to_dict(cfg.codec)
        latent = ("encoder", "layer_indices", "token_mean", "decoder_patch")
        return {"method.kind": m.kind, "method.size": m.size, "method.latent_dim": m.latent_dim,
                "method.grid": m.grid, "method.output": m.output, "method.positions": m.positions,
                "disc_blocks": list(m.disc_blocks), "method.disc": m.disc * (m.gan_weight > 0),
                **{f"codec.{k}": codec[k] for k in latent}}  # fmt: skip

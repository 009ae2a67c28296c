"""DSD (Wang & Zhang 2025, "Diffusion as Self-Distillation"): one ViT encodes, decodes and denoises, trained
end to end. Read as self-distillation, naive joint training collapses the latent; four switches cure it.

With ``z1 = E(x+)`` (online network, strong view: masked patches), ``z2 = E'(x)`` (the EMA *target* network,
weak view) and ``z_t = (1 - t) z1 + t eps`` (t = 0 data):

    L_dsd = || D(z_t, t, y) - sg(z2) ||^2          the diffusion head predicts the clean latent (x-space)
    L_vel = || V(sg(h), t) - sg((z_t - D) / t) ||^2    the velocity head, on the trunk's output detached
    L_rec = || decode((1 - s) z + s eps') - x ||^2 (+ LPIPS, + GAN)   s ~ U(0, recon_tau), z = E(x)
    + optional: REPA alignment of a shallow encode block with a frozen encoder; self-distillation of the last
      block (online strong view -> target weak view); a linear classifier on the pooled latent trunk.

LPIPS and the GAN (a second phase: RAE's discriminator, heads on a frozen DINO ViT-S/8, or with ``disc:
encoder`` on the frozen ``encoders[0]``; its adaptive weight at the image head) are the pieces RAE's decoder
uses (``decoder_losses``, ``discriminator``, ``lpips``); the critic sees fresh decodes of the clean latent.

The switches (``stop_gradient``, ``predict_clean``, ``ema_target``, ``strong_augment``), all off, give the
naive baseline ``|| v(z_t) - (eps - z) ||^2`` with gradients through both ``z_t`` and the target. The latent's
effective rank on a fixed batch is logged with the losses (``erank``), with a warning when it collapses.
Sampling integrates the velocity head (``sampler_head: diffusion`` converts the diffusion head's prediction)
and decodes with the image head.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, ConfigError, MethodConfig, checked, nonnegative, positive, replace, to_dict, unit
from ..flow.denoiser import NetworkDenoiser
from ..flow.loss import LossOutput, drop_labels
from ..flow.path import build_path, expand_t
from ..flow.timesteps import TimeSampler
from ..models import build_model
from ..models.dit import ModelOutput
from ..models.dsd_net import DSDNet
from ..registry import METHODS
from .base import Draw, Method, MethodEnv, Phase, TrainBatch
from .decoder_losses import GANSettings, critic_loss, draw_gan_views, generator_gan, upgrade_gan
from .discriminator import build_discriminator, legacy_disc_name
from .erank import token_rank
from .lpips import lpips_for
from .repa import build_projector, match_grid, negative_cosine


@dataclass(frozen=True)
class DSDConfig(MethodConfig, GANSettings):
    kind: str = "dsd"
    stop_gradient: bool = True  # fix 1: no gradient through the target copy of the latent
    predict_clean: bool = True  # fix 2: the diffusion head predicts z2, not v (a rank-reducing predictor)
    ema_target: bool = True  # the target latent comes from an EMA copy of the network
    strong_augment: bool = True  # the online branch sees a masked view
    target_momentum: float = checked(0.996, unit)  # target <- m target + (1 - m) online, after every step
    mask_ratio: float = checked(0.4, unit)  # strong view: each patch masked with this probability
    velocity_weight: float = checked(1.0, nonnegative)
    recon_weight: float = checked(1.0, nonnegative)
    recon_tau: float = checked(0.3, unit)  # noise interpolation of the decoded latent, s ~ U(0, tau)
    gan_weight: float = checked(0.0, nonnegative)  # > 0: RAE's discriminator (see disc), from disc_start
    lpips_weight: float = checked(0.0, nonnegative)  # > 0 with lpips (and lpips_vgg): LPIPS on reconstructions
    align_weight: float = checked(0.0, nonnegative)  # > 0: REPA on encode block align_depth (needs encoders)
    align_depth: int = checked(0, nonnegative)  # 1-indexed; 0: a quarter of the trunk
    projector_dim: int = checked(2048, positive)
    deep_weight: float = checked(0.0, nonnegative)  # self-distillation of the last encode block
    cls_weight: float = checked(0.0, nonnegative)  # classification from the pooled encode trunk
    erank_images: int = checked(64, positive)  # the fixed batch the latent's effective rank is measured on
    erank_warning: float = checked(2.0, nonnegative)  # warn when the effective rank falls below this
    sampler_head: Literal["velocity", "diffusion"] = "velocity"

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        return upgrade_gan(data, fakes="clean")  # repflow 0.2's DSD critic saw clean decodes already

    @property
    def naive(self) -> bool:
        return not (self.stop_gradient or self.predict_clean or self.ema_target or self.strong_augment)


def mse(a: Tensor, b: Tensor) -> Tensor:
    return (a.float() - b.float()).pow(2).mean()


@METHODS.register("dsd", DSDConfig)
class DSDMethod(Method):
    ema_networks: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, cfg: Config, env: MethodEnv):
        super().__init__(cfg, env)
        m = cfg.method
        if getattr(env.codec, "name", "pixel") != "pixel":
            raise ConfigError("DSD encodes pixels with its own network: set codec.kind=pixel")
        net = self.add_network("model", type(self).inference_networks(cfg)["model"])
        # parameters a switch leaves unused get no gradient: frozen, so DDP and the optimiser never wait for one
        net.mask_token.requires_grad_(m.strong_augment)
        for head in (net.velocity_block, net.velocity_norm, net.velocity_out):
            head.requires_grad_(m.velocity_weight > 0)
        heads = nn.ModuleDict()
        d = cfg.model.hidden_size
        if m.align_weight > 0:
            heads["align"] = nn.ModuleList(build_projector(d, m.projector_dim, e) for e in env.encoder_dims)
        if m.deep_weight > 0:
            heads["deep"] = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        if m.cls_weight > 0:
            if net.num_classes == 0:
                raise ConfigError("method.cls_weight > 0 needs class labels (model.num_classes > 0)")
            heads["cls"] = nn.Linear(d, net.num_classes)
        self.add_network("objective", heads)
        if m.ema_target:
            target = self.add_network("target", copy.deepcopy(net))
            target.requires_grad_(False)
        t = cfg.flow.time
        self.path = build_path(cfg.flow.path)
        self.times = TimeSampler(kind=t.kind, mean=t.mean, std=t.std, shift=t.shift)
        self.class_dropout = cfg.model.class_dropout if net.num_classes else 0.0
        self._lpips = [lp] if (lp := lpips_for(m, env.device)) else []
        if m.gan_weight > 0:
            if m.disc == "encoder" and not env.encoders:
                raise ConfigError("method.disc=encoder needs a frozen encoder for the discriminator (encoders)")
            self.add_network("disc", build_discriminator(m, env.encoders[0] if env.encoders else None, env.device))
        self.monitor_images = m.erank_images
        if cfg.train.grad_clip > 0 and m.velocity_weight > 0:
            print("repflow: note: train.grad_clip clips all of DSD's parameters together, so the detached velocity "
                  "head's gradient norm still scales the trunk's steps; DSD presets use train.grad_clip=0",
                  file=sys.stderr)  # fmt: skip

    def phases(self) -> list[Phase]:
        m = self.cfg.method
        main = Phase("main", ("model", "objective"), self.cfg.train)  # the target moves by EMA only
        if m.gan_weight == 0:
            return [main]
        return [main, Phase("disc", ("disc",), replace(self.cfg.train, lr=m.disc_lr), start_step=m.disc_start)]

    def describe(self) -> str:
        m = self.cfg.method
        on = [k for k in ("stop_gradient", "predict_clean", "ema_target", "strong_augment") if getattr(m, k)]
        extra = [k for k in ("align", "deep", "cls") if getattr(m, f"{k}_weight") > 0] + ["lpips"] * bool(self._lpips)
        fixes = "naive: no fixes" if m.naive else "fixes: " + ", ".join(on)
        return f"dsd ({fixes}; reconstruction{' + ' + ', '.join(extra) if extra else ''})"

    # -- one step ---------------------------------------------------------------------------------------------
    def draw(self, batch: TrainBatch, n: int, generator: torch.Generator | None) -> Draw:
        net, dev = self.model, batch.x.device
        tokens = (n, net.grid * net.grid, net.latent_channels)
        return Draw({
            "t": self.times.sample(n, self.path, generator, device=dev),
            "eps": torch.randn(tokens, generator=generator, device=dev),
            "drop": torch.rand(n, generator=generator, device=dev) < self.class_dropout,
            "mask": torch.rand(tokens[:2], generator=generator, device=dev) < self.cfg.method.mask_ratio,
            "recon_s": self.cfg.method.recon_tau * torch.rand(n, generator=generator, device=dev),
            "recon_eps": torch.randn(tokens, generator=generator, device=dev),
            **(draw_gan_views(n, generator, dev) if self.cfg.method.gan_weight > 0 else {}),
        })  # fmt: skip

    def forward(self, batch: TrainBatch, draw: Draw, phase: str = "main", step: int = 0) -> LossOutput:
        m, net, x = self.cfg.method, self.model, batch.x
        if phase == "disc":  # after the main update in this step: a fresh decode
            noisy = draw if m.disc_fakes == "noisy" else None
            loss, terms = critic_loss(self.disc, x, lambda: self.reconstruct(x, noisy), draw.tensors, m.diffaug)
            return LossOutput(total=loss, terms=terms)
        align = (m.align_depth,) if m.align_weight > 0 else ()
        z, hidden = net.encode(x, keep=align)  # online, weak view: (B, N, C)
        z1, hidden_s = net.encode(x, mask=draw["mask"]) if m.strong_augment else (z, hidden)
        if m.ema_target:
            with torch.no_grad():
                z2, hidden_t = self.target.encode(x)
        else:
            z2, hidden_t = z, hidden
        if m.stop_gradient:
            z2 = z2.detach()
        t, eps = draw["t"], draw["eps"]
        z_t = self.path.interpolate(z1, eps, t)
        y = drop_labels(batch.y, draw["drop"], self.class_dropout, net.null_label)
        out = net.denoise(z_t, t, y)
        if m.predict_clean:
            target = z2
        else:  # the velocity of the path z_t lies on: from z1, the latent it was built from (not the other view's)
            target = self.path.target("v", z1.detach() if m.stop_gradient else z1, eps, t)
        terms = {"dsd": mse(out.pred, target)}
        # the velocity head distils the diffusion head's implied velocity: the same minimiser as regressing on
        # (z_t - z2) / t, without that target's variance near t = 0 where the two views differ
        kind = "x" if m.predict_clean else "v"
        v_target = self.path.convert(out.pred.detach(), kind, "v", z_t.detach(), t, self.cfg.flow.min_denominator)
        terms["velocity"] = mse(out.velocity, v_target)
        x_hat = self.decode_noised(z, draw)
        terms["recon"] = mse(x_hat, x)
        rec = terms["recon"]
        if self._lpips:
            terms["lpips"] = self._lpips[0](x_hat, x).mean()  # grey images are replicated to RGB inside
            rec = rec + m.lpips_weight * terms["lpips"]
        total = m.velocity_weight * terms["velocity"] + terms["dsd"] + m.recon_weight * rec
        if m.gan_weight > 0 and step >= m.gan_start:
            gan, logged = generator_gan(self.disc, x_hat, rec, net.image_head.weight, draw.tensors, m)
            terms.update(logged)
            total = total + m.recon_weight * gan
        for name, value, weight in self.auxiliary(batch, hidden, hidden_s, hidden_t, align):
            terms[name] = value
            total = total + weight * value
        # a total for loss.png that shows the trunk's training: the velocity head reads the trunk detached, so its
        # loss (a v-space regression, the largest term) trains only that head, yet it dominates the total; what
        # trains the trunk and its latent, diffusion and image heads is the total without it
        terms["loss_trunk"] = (total - m.velocity_weight * terms["velocity"]).detach()
        return LossOutput(total=total, terms=terms)

    def decode_noised(self, z: Tensor, draw: Draw) -> Tensor:
        """The reconstruction loss's decode: of ``(1 - s) z + s eps'`` (noise interpolation), s ~ U(0, recon_tau)."""
        s = expand_t(draw["recon_s"], z)
        return self.model.decode((1 - s) * z + s * draw["recon_eps"])

    def reconstruct(self, x: Tensor, draw: Draw | None = None) -> Tensor:
        """The critic's fakes: decodes of the online latent, clean, or noise-interpolated with ``draw``."""
        z, _ = self.model.encode(x)
        return self.model.decode(z) if draw is None else self.decode_noised(z, draw)

    def auxiliary(self, batch, hidden, hidden_s, hidden_t, align):
        """The optional terms: (name, value, weight)."""
        m, heads, last = self.cfg.method, self.objective, self.cfg.model.depth
        if m.align_weight > 0:
            tokens = hidden[align[0]]
            losses = [negative_cosine(proj(tokens), match_grid(batch.features[f"{i}.patch"], tokens.shape[1]))
                      for i, proj in enumerate(heads["align"])]  # fmt: skip
            yield "align", torch.stack(losses).mean(), m.align_weight
        if m.deep_weight > 0:
            yield "deep", negative_cosine(heads["deep"](hidden_s[last]), hidden_t[last].detach()), m.deep_weight
        if m.cls_weight > 0 and batch.y is not None:
            yield "cls", F.cross_entropy(heads["cls"](hidden[last].mean(dim=1)).float(), batch.y), m.cls_weight

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """The EMA target follows the online network: ``target <- m target + (1 - m) online``."""
        if not self.cfg.method.ema_target:
            return
        m = self.cfg.method.target_momentum
        for p_t, p in zip(self.target.parameters(), self.model.parameters(), strict=True):
            p_t.lerp_(p.detach(), 1 - m)

    def monitor(self, batch: TrainBatch) -> tuple[dict[str, float], str]:
        z, _ = self.model.encode(batch.x)
        erank = float(token_rank(z))
        values = {"erank": erank, "erank_latent_std": float(z.float().std(dim=(0, 1)).mean())}
        limit = self.cfg.method.erank_warning
        warning = ""
        if erank < limit:
            warning = (f"the latent's effective rank fell to {erank:.2f} (< method.erank_warning={limit:g}; at most "
                       f"{z.shape[-1]}): it is collapsing. DSD's fixes: method.stop_gradient, predict_clean, "
                       "ema_target, strong_augment")  # fmt: skip
        return values, warning

    # -- config ---------------------------------------------------------------------------------------------
    @classmethod
    def resolve_static(cls, cfg: Config) -> Config:
        if cfg.model.family != "dsd":
            raise ConfigError(f"method.kind=dsd trains model.family=dsd (got {cfg.model.family})")
        m = cfg.method
        if m.align_weight > 0 and m.align_depth == 0:
            m = dataclasses.replace(m, align_depth=max(1, cfg.model.depth // 4))
        if m.align_depth > cfg.model.depth:
            raise ConfigError(f"method.align_depth={m.align_depth} exceeds the trunk's {cfg.model.depth} blocks")
        return cfg.replace(method=m)

    @classmethod
    def needs_encoders(cls, cfg: Config) -> bool:
        m = cfg.method
        return m.align_weight > 0 or (m.gan_weight > 0 and m.disc == "encoder")

    @classmethod
    def resume_key(cls, cfg: Config) -> dict[str, Any]:
        m = cfg.method
        key = {f"method.{k}": to_dict(m)[k] for k in ("ema_target", "align_depth", "projector_dim")}
        key.update({f"method.{k}_on": getattr(m, f"{k}_weight") > 0 for k in ("align", "deep", "cls", "gan")})
        key["method.disc"] = m.disc if m.gan_weight > 0 else ""
        return {**super().resume_key(cfg), **key}  # the networks that exist and their shapes

    @classmethod
    def legacy_name(cls, cfg: Config, name: str) -> str:
        return legacy_disc_name(name)

    @classmethod
    def inference_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        return {"model": build_model(cfg.model)}

    @classmethod
    def denoiser(cls, cfg: Config, networks: Mapping[str, nn.Module], device: torch.device, codec=None):
        net, m = networks["model"], cfg.method
        velocity = m.sampler_head == "velocity"
        conditional = net.num_classes > 0 and cfg.model.class_dropout > 0
        return NetworkDenoiser(
            network=LatentDenoiser(net, velocity), path=build_path(cfg.flow.path),
            prediction="v" if velocity or not m.predict_clean else "x",
            shapes={"x": (net.latent_channels, net.grid, net.grid)},
            decoder=lambda s: net.decode(net.to_tokens(s["x"])).clamp(-1, 1), num_classes=net.num_classes,
            null_label=net.null_label if conditional else None, shift=cfg.sample.shift if cfg.sample.shift > 0
            else cfg.flow.time.shift, min_denominator=cfg.flow.min_denominator, precision=cfg.train.precision,
        )  # fmt: skip

    @classmethod
    def reconstructor(cls, cfg: Config, networks, codec=None):
        net = networks["model"]

        @torch.no_grad()
        def reconstruct(images: Tensor) -> Tensor:
            return net.decode(net.encode(images)[0]).clamp(-1, 1)

        return reconstruct


class LatentDenoiser(nn.Module):
    """DSD's network as the flow code's ``(states, t, y) -> prediction``: latent grids in, one head's output."""

    def __init__(self, net: DSDNet, velocity: bool):
        super().__init__()
        self.net, self.velocity = net, velocity

    def forward(self, states: dict[str, Tensor], t: Tensor, y: Tensor | None = None, return_hidden=()) -> ModelOutput:
        out = self.net.denoise(self.net.to_tokens(states["x"]), t, y)
        return ModelOutput(pred={"x": self.net.to_grid(out.velocity if self.velocity else out.pred)})

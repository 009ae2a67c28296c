"""MeanFlow: one- and few-step generation trained from scratch (Geng et al. 2025), on the flow method's network.

The network is the flow method's (any family: SiT, JiT, DiT^DH) with a second time input, the interval
``h = t - r`` (``model.interval_input``, set here). The objective (``flow/meanflow.py``) replaces flow matching;
the flow method's terms compose as they do with flow matching: REPA aligns the hidden states of the
differentiated call, REG's class token is one more stream with its own average velocity. Sampling jumps with
the average velocity (``sample.sampler=mean``: ``z_r = z_t - (t - r) u``), so ``--steps 1`` is one network call;
the other samplers integrate the instantaneous velocity ``u(z_t, t, t)``.

iMF's options: ``method.guidance_conditioning`` draws w and its interval per sample and gives them to the
network (``model.guidance_input``, set here; sampling feeds it ``sample.cfg`` and ``sample.cfg_interval``), and
``model.velocity_head`` gives the network a second head for the velocity loss and the guidance calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import (
    Config,
    ConfigError,
    MethodConfig,
    at_least,
    checked,
    each,
    nonnegative,
    positive,
    probability,
    unit,
)
from ..flow.meanflow import MeanFlowLoss
from ..flow.path import build_path
from ..flow.timesteps import TimeSampler
from ..models import network_class
from ..registry import METHODS
from .base import MethodEnv
from .flow import FlowMethod


@dataclass(frozen=True)
class MeanFlowConfig(MethodConfig):
    """``method.kind: meanflow`` and its settings (defaults: the official code's, guidance off)."""

    kind: str = "meanflow"
    r_equals_t: float = checked(0.75, probability)  # share of each batch with r = t (flow matching)
    omega: float = checked(1.0, nonnegative)  # guidance folded into the target: 1 with kappa 0 is off
    kappa: float = checked(0.0, lambda v: None if 0 <= v < 1 else "must lie in [0, 1)")
    guidance_interval: tuple[float, float] = checked((0.0, 1.0), each(unit))  # t where omega, kappa apply
    norm_p: float = checked(1.0, nonnegative)  # adaptive weight 1 / (loss + norm_eps)^norm_p; 0: plain loss
    norm_eps: float = checked(0.01, positive)
    derivative: Literal["jvp", "finite_difference"] = "jvp"  # finite_difference: MF-RAE's central difference
    fd_step: float = checked(5e-3, lambda v: None if 0 < v < 0.5 else "must lie in (0, 0.5)")
    # iMF: the JVP's tangent is the network's own conditional velocity u(z_t, t, t | c), not the noisy v_g ...
    tangent: Literal["target", "model"] = "target"
    # ... and an auxiliary loss on its instantaneous velocity u(z_t, t, t) against v_g, this weight (iMF: 1)
    velocity_weight: float = checked(0.0, nonnegative)
    # iMF: w drawn per sample in [1, guidance_max] (density ~ w^-guidance_beta) with its interval t_lo ~
    # U(guidance_start_range), t_hi ~ U(guidance_end_range), all given to the network (model.guidance_input), so
    # that `repflow sample --cfg W --cfg-interval LO HI` feeds any w to one network call
    guidance_conditioning: bool = False
    guidance_max: float = checked(8.0, at_least(1.0))
    guidance_beta: float = checked(1.0, nonnegative)
    guidance_start_range: tuple[float, float] = checked((0.0, 0.5), each(unit))
    guidance_end_range: tuple[float, float] = checked((0.5, 1.0), each(unit))

    def validate(self) -> None:
        for key in ("guidance_interval", "guidance_start_range", "guidance_end_range"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ConfigError(f"config key 'method.{key}' needs lo <= hi, got {(lo, hi)!r}")
        if self.guidance_conditioning and (self.omega != 1.0 or self.kappa != 0.0):
            raise ConfigError(f"method.guidance_conditioning draws w per sample: it replaces method.omega="
                              f"{self.omega:g}, method.kappa={self.kappa:g}; set omega=1 and kappa=0")  # fmt: skip


def build_meanflow_loss(cfg: Config, null_label: int) -> MeanFlowLoss:
    m, t = cfg.method, cfg.flow.time
    return MeanFlowLoss(
        path=build_path(cfg.flow.path),
        time_sampler=TimeSampler(kind=t.kind, mean=t.mean, std=t.std, shift=t.shift),
        r_equals_t=m.r_equals_t,
        class_dropout=cfg.model.class_dropout if cfg.model.num_classes > 0 else 0.0,
        null_label=null_label,
        omega=m.omega,
        kappa=m.kappa,
        guidance_interval=tuple(m.guidance_interval),
        norm_p=m.norm_p,
        norm_eps=m.norm_eps,
        derivative=m.derivative,
        fd_step=m.fd_step,
        noise_scale=cfg.flow.noise_scale,
        tangent=m.tangent,
        velocity_weight=m.velocity_weight,
        velocity_head=cfg.model.velocity_head > 0,
        guidance_conditioning=m.guidance_conditioning,
        guidance_max=m.guidance_max,
        guidance_beta=m.guidance_beta,
        guidance_start_range=tuple(m.guidance_start_range),
        guidance_end_range=tuple(m.guidance_end_range),
        prediction=cfg.flow.prediction,
        min_denominator=cfg.flow.min_denominator,
    )


@METHODS.register("meanflow", MeanFlowConfig)
class MeanFlowMethod(FlowMethod):
    """The flow method's network and terms, trained by the MeanFlow objective."""

    TRAINS_VELOCITY_HEAD = True

    def __init__(self, cfg: Config, env: MethodEnv):
        super().__init__(cfg, env)
        self.flow = build_meanflow_loss(cfg, getattr(self.model, "null_label", 0))

    def describe(self) -> str:
        m = self.cfg.method
        terms = ", ".join(self.objective.terms) or "no terms"
        how = f"central finite difference, step {m.fd_step:g}"
        if m.derivative == "jvp":
            how = "JVP by torch.func.jvp, attention on its math path under the JVP (fused kernels have no forward AD)"
        lo, hi = m.guidance_interval
        guidance = f"guidance in the target omega {m.omega:g} kappa {m.kappa:g} on t in [{lo:g}, {hi:g}]"
        guidance = guidance if self.flow.guides else "no guidance"
        if m.guidance_conditioning:
            (a, b), (c, d) = m.guidance_start_range, m.guidance_end_range
            guidance = (f"guidance conditioning: w in [1, {m.guidance_max:g}] (density ~ w^-{m.guidance_beta:g}) on "
                        f"t in [U({a:g}, {b:g}), U({c:g}, {d:g})] per sample, given to the network (iMF)")  # fmt: skip
        imf = "; x-prediction, u = (z - x) / t (pMF)" if self.cfg.flow.prediction == "x" else ""
        imf += "; tangent u(z, t, t | c) (iMF)" if m.tangent == "model" else ""
        imf += f"; velocity loss x{m.velocity_weight:g} (iMF)" if m.velocity_weight else ""
        head = self.cfg.model.velocity_head
        imf += f"; a velocity head of {head} blocks (iMF)" if head else ""
        return f"meanflow ({terms}; {how}; r = t on {m.r_equals_t:g} of each batch; {guidance}{imf})"

    @classmethod
    def resolve_static(cls, cfg: Config) -> Config:
        f = cfg.flow
        if f.prediction == "eps" or f.loss_space != "v" or (f.prediction == "x" and f.path != "linear"):
            raise ConfigError(f"method.kind=meanflow predicts the average velocity (flow.prediction=v) or pMF's "
                              f"x = z_t - t u on the linear path (flow.prediction=x), with its loss in velocity "
                              f"space (flow.loss_space=v); got prediction {f.prediction}, loss_space {f.loss_space}, "
                              f"path {f.path}")  # fmt: skip
        if getattr(cfg.model, "internal_depth", 0):
            raise ConfigError("method.kind=meanflow does not train an internal output: set model.internal_depth=0")
        if cfg.train.grad_checkpointing and cfg.method.derivative == "jvp":
            raise ConfigError("train.grad_checkpointing does not run under the JVP (forward-mode AD): turn it off "
                              "or use method.derivative=finite_difference")  # fmt: skip
        head = cfg.model.velocity_head
        if head and not getattr(network_class(cfg.model), "VELOCITY_HEAD", False):
            raise ConfigError(f"model.velocity_head={head}: model.family={cfg.model.family} has no velocity head "
                              "(sit, lightningdit and jit have); set it to 0")  # fmt: skip
        if head and not cfg.method.velocity_weight:
            raise ConfigError(f"model.velocity_head={head} is trained by the velocity loss: set method.velocity_weight "
                              "> 0 (iMF: 1)")  # fmt: skip
        if cfg.method.guidance_conditioning and cfg.sample.cfg < 1:
            raise ConfigError(f"sample.cfg={cfg.sample.cfg:g}: a guidance-conditioned run was trained on w >= 1")
        conditioning = cfg.method.guidance_conditioning
        return super().resolve_static(
            cfg.replace(**{"model.interval_input": True, "model.guidance_input": conditioning})
        )

    @classmethod
    def resolve(cls, cfg: Config, env: MethodEnv) -> Config:
        cfg = super().resolve(cfg, env)
        m = cfg.method
        if (m.omega != 1.0 or m.kappa != 0.0) and (cfg.model.num_classes <= 0 or cfg.model.class_dropout <= 0):
            raise ConfigError(f"method.omega={m.omega:g}, method.kappa={m.kappa:g} fold classifier-free guidance into "
                              "the target: that needs a class-conditional run with model.class_dropout > 0; set "
                              "omega=1 and kappa=0 for this one")  # fmt: skip
        if m.guidance_conditioning and (cfg.model.num_classes <= 0 or cfg.model.class_dropout <= 0):
            raise ConfigError("method.guidance_conditioning learns classifier-free guidance: that needs a "
                              "class-conditional run with model.class_dropout > 0")  # fmt: skip
        return cfg


__all__ = ["MeanFlowConfig", "MeanFlowMethod", "build_meanflow_loss"]

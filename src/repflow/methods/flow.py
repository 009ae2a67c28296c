"""The flow method: flow matching of a denoising network (SiT), plus composable *terms* (REPA, REG, ...).

A term is a file under ``methods/`` that registers its config section (a top-level key such as ``repa:``)
and a :class:`Term` class: what it adds to the network (REG's vector stream), the extra clean streams it
denoises, the extra losses it computes from the network's hidden states, its guidance scales, the config
values its weights depend on and what it fills in when training starts. Terms may own trainable modules
(REPA's projector); they live in the ``objective`` network, so inference weights never contain them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..config import Config, ConfigError, MethodConfig, SampleConfig, to_dict
from ..flow.denoiser import NetworkDenoiser
from ..flow.loss import FlowDraw, FlowMatching, FlowSample, LossOutput
from ..flow.path import build_path
from ..flow.timesteps import TimeSampler
from ..models import build_model, network_class
from ..registry import ARCHITECTURES, METHODS, TERMS
from .base import Method, MethodEnv, ResolvesConfig, TrainBatch


class Term(ResolvesConfig, nn.Module):
    """A piece of the flow objective; subclasses register with ``@TERMS.register(section, ConfigClass)``."""

    section: ClassVar[str] = ""
    #: blocks (1-indexed) whose hidden states this term reads from the network
    hidden_layers: tuple[int, ...] = ()

    # -- config-level hooks (class methods: also used when no term instance exists, e.g. at sampling) -------
    @classmethod
    def enabled(cls, cfg: Config) -> bool:
        return bool(getattr(cfg, cls.section).enabled)

    @classmethod
    def build(cls, cfg: Config, env: MethodEnv, network: nn.Module) -> Term:
        return cls()

    @classmethod
    def needs_encoders(cls, cfg: Config) -> bool:
        return False

    @classmethod
    def network_streams(cls, cfg: Config) -> dict[str, int]:
        """Vector streams it adds to the network (name -> width), denoised jointly with the image."""
        return {}

    @classmethod
    def learned_tokens(cls, cfg: Config) -> int:
        return 0

    @classmethod
    def front_token(cls, cfg: Config) -> str:
        """The kind of token it puts in front of the image's ("stream" or "learned"; "" none): a family lists the
        kinds it carries in ``FRONT_TOKENS``."""
        return ""

    @classmethod
    def guidance(cls, cfg: Config, opts: SampleConfig, scales: dict[str, float]) -> dict[str, float]:
        """Adjust the per-stream guidance scales (REG: its class token's own scale)."""
        return scales

    @classmethod
    def resume_key(cls, cfg: Config) -> dict[str, Any]:
        return {f"{cls.section}.enabled": True}

    # -- training ------------------------------------------------------------------------------------------
    def streams(self, batch: TrainBatch) -> dict[str, tuple[Tensor, float]]:
        """Extra clean streams to denoise jointly with the image: name -> (tensor (B, ...), loss weight)."""
        return {}

    def loss(self, batch: TrainBatch, sample: FlowSample) -> dict[str, tuple[Tensor, float]]:
        """Named extra loss terms: name -> (scalar, weight)."""
        return {}


def resolve_block(cfg: Config, section: str, default: int) -> Config:
    """A term's ``depth`` (a 1-indexed block; 0 means ``default``) filled in and checked against the model."""
    settings = getattr(cfg, section)
    depth = settings.depth or default
    if not 1 <= depth <= cfg.model.depth:
        raise ConfigError(f"{section}.depth={depth} must lie in 1..{cfg.model.depth} (the model's blocks)")
    return cfg.replace(**{section: dataclasses.replace(settings, depth=depth)})


def check_width(cfg: Config) -> None:
    """RAE's width rule: a network narrower than a token's values (channels x patch^2) cannot fit a velocity
    or noise of full rank there (RAE Sec. 4); x-prediction escapes it (JiT). ``model.allow_narrow`` forces."""
    from ..models import network_class

    m = cfg.model
    if not m.in_channels or not m.patch_size or cfg.flow.prediction == "x" or getattr(m, "allow_narrow", True):
        return
    family = network_class(m)
    width = family.output_width(m) if hasattr(family, "output_width") else m.hidden_size
    values = m.in_channels * m.patch_size**2
    if width < values:
        raise ConfigError(
            f"model width {width} is below the {values} values of a token ({m.in_channels} channels x "
            f"{m.patch_size}x{m.patch_size}): RAE finds such a network cannot fit a {cfg.flow.prediction}-prediction; "
            "widen the model, use model.family=dit_dh (a wide head), flow.prediction=x, or model.allow_narrow=true"
        )


def enabled_terms(cfg: Config) -> list[type[Term]]:
    """The term classes a config switches on, in name order (a fixed order keeps parameter names stable)."""
    return [e.target for e in TERMS.entries() if e.target.enabled(cfg)]


def vector_streams(cfg: Config) -> dict[str, int]:
    out: dict[str, int] = {}
    for term in enabled_terms(cfg):
        out.update(term.network_streams(cfg))
    return out


def stream_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every generated stream, for the samplers."""
    m = cfg.model
    return {"x": (m.in_channels, m.input_size, m.input_size), **{k: (d,) for k, d in vector_streams(cfg).items()}}


def guidance_scales(cfg: Config, opts: SampleConfig | None = None) -> dict[str, float]:
    opts = opts or cfg.sample
    scales = {k: opts.cfg for k in stream_shapes(cfg)}
    for term in enabled_terms(cfg):
        scales = term.guidance(cfg, opts, scales)
    return scales


def build_flow_network(cfg: Config) -> nn.Module:
    """The denoising network of a resolved config, with what the terms add to it."""
    learned = sum(term.learned_tokens(cfg) for term in enabled_terms(cfg))
    return build_model(cfg.model, vector_streams=vector_streams(cfg), learned_tokens=learned)


def build_flow_matching(cfg: Config, null_label: int) -> FlowMatching:
    t = cfg.flow.time
    return FlowMatching(
        path=build_path(cfg.flow.path),
        time_sampler=TimeSampler(kind=t.kind, mean=t.mean, std=t.std, shift=t.shift),
        prediction=cfg.flow.prediction,
        loss_space=cfg.flow.loss_space,
        min_denominator=cfg.flow.min_denominator,
        class_dropout=cfg.model.class_dropout if cfg.model.num_classes > 0 else 0.0,
        null_label=null_label,
        noise_scale=cfg.flow.noise_scale,
        internal_weight=cfg.flow.internal_weight,
    )


@dataclass(frozen=True)
class FlowMethodConfig(MethodConfig):
    kind: str = "flow"


@METHODS.register("flow", FlowMethodConfig)
class FlowMethod(Method):
    """SiT / REPA / REG / ...: one network trained by flow matching, with the enabled terms."""

    TRAINS_VELOCITY_HEAD = False  # model.velocity_head (iMF's): MeanFlow trains it

    def __init__(self, cfg: Config, env: MethodEnv):
        super().__init__(cfg, env)
        model = self.add_network("model", build_flow_network(cfg))
        terms = {term.section: term.build(cfg, env, model) for term in enabled_terms(cfg)}
        self.add_network("objective", Objective(terms))
        self.flow = build_flow_matching(cfg, getattr(model, "null_label", 0))

    def describe(self) -> str:
        terms = ", ".join(self.objective.terms) or "no terms"
        f = self.cfg.flow
        shift = f", time shift {f.time.shift:.3g}" if f.time.shift != 1 else ""  # DiT^DH's dimension shift
        what = f"{f.path} path, {f.prediction}-prediction, loss in {f.loss_space}, t ~ {f.time.kind}{shift}"
        return f"flow ({terms}; {what})"

    def clean_streams(self, batch: TrainBatch) -> tuple[dict[str, Tensor], dict[str, float]]:
        streams, weights = {"x": batch.x}, {"x": 1.0}
        for term in self.objective.terms.values():
            for name, (value, weight) in term.streams(batch).items():
                streams[name], weights[name] = value, weight
        return streams, weights

    def draw(self, batch: TrainBatch, n: int, generator: torch.Generator | None) -> FlowDraw:
        streams, _ = self.clean_streams(batch)
        return self.flow.draw({k: v.shape[1:] for k, v in streams.items()}, n, generator, batch.x.device)

    def forward(self, batch: TrainBatch, draw: FlowDraw, phase: str = "main", step: int = 0) -> LossOutput:
        streams, weights = self.clean_streams(batch)
        terms = self.objective.terms.values()
        layers = sorted({i for term in terms for i in term.hidden_layers})
        out, sample = self.flow(self.model, streams, batch.y, weights, draw=draw, return_hidden=layers)
        total, logged = out.total, dict(out.terms)
        for term in terms:
            for name, (value, weight) in term.loss(batch, sample).items():
                logged[name] = value
                total = total + weight * value
        return LossOutput(total=total, terms=logged)

    # -- config ---------------------------------------------------------------------------------------------
    @classmethod
    def needs_encoders(cls, cfg: Config) -> bool:
        return any(term.needs_encoders(cfg) for term in enabled_terms(cfg))

    @classmethod
    def resolve(cls, cfg: Config, env: MethodEnv) -> Config:
        for term in enabled_terms(cfg):
            cfg = term.resolve(cfg, env)
        return cfg

    @classmethod
    def resolve_static(cls, cfg: Config) -> Config:
        if not getattr(network_class(cfg.model), "flow_network", True):
            raise ConfigError(f"model.family={cfg.model.family} is trained by method.kind={cfg.model.family}")
        check_width(cfg)
        if cfg.model.velocity_head and not cls.TRAINS_VELOCITY_HEAD:
            raise ConfigError(f"model.velocity_head={cfg.model.velocity_head} is iMF's, trained by method.kind="
                              f"meanflow with method.velocity_weight > 0; method.kind={cfg.method.kind} would leave it "
                              "untrained: set it to 0")  # fmt: skip
        if cfg.sample.encoder_reuse != 1 and not hasattr(network_class(cfg.model), "with_encoder_reuse"):
            raise ConfigError(f"sample.encoder_reuse={cfg.sample.encoder_reuse} needs a network with a condition "
                              f"encoder (model.family=ddt), not {cfg.model.family}; set it to 1")  # fmt: skip
        for term in enabled_terms(cfg):
            kind = term.front_token(cfg)
            carried = getattr(network_class(cfg.model), "FRONT_TOKENS", ())
            if kind and kind not in carried:
                able = [e.name for e in ARCHITECTURES.entries() if kind in getattr(e.target, "FRONT_TOKENS", ())]
                raise ConfigError(f"{term.section} puts a {kind} token in front of the image; model.family="
                                  f"{cfg.model.family} has no place for one ({', '.join(able)} have)")  # fmt: skip
            cfg = term.resolve_static(cfg)
        return cfg

    @classmethod
    def resume_key(cls, cfg: Config) -> dict[str, Any]:
        key = super().resume_key(cfg)
        key.update({f"flow.{k}": getattr(cfg.flow, k) for k in ("path", "prediction")})  # what the output means
        codec = to_dict(cfg.codec)
        latent = ("kind", "scale", "shift", "encoder", "layer_indices", "token_mean", "decoder_patch")  # what z means
        key.update({f"codec.{k}": codec[k] for k in latent if k in codec})
        for term in enabled_terms(cfg):
            key.update(term.resume_key(cfg))
        key["encoders"] = [e.name for e in cfg.encoders] if cls.needs_encoders(cfg) else []
        return key

    @classmethod
    def inference_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        return {"model": build_flow_network(cfg)}

    @classmethod
    def denoiser(cls, cfg: Config, networks: Mapping[str, nn.Module], device: torch.device, codec=None):
        model = networks["model"]
        shift = cfg.sample.shift if cfg.sample.shift > 0 else cfg.flow.time.shift
        conditional = cfg.model.num_classes > 0 and cfg.model.class_dropout > 0

        def decode(state: dict[str, Tensor]) -> Tensor:
            if codec is None:
                raise ValueError("this denoiser was built without a codec; pass one to decode")
            return codec.decode(state["x"])

        return NetworkDenoiser(
            network=model, path=build_path(cfg.flow.path), prediction=cfg.flow.prediction,
            shapes=stream_shapes(cfg), decoder=decode, num_classes=max(cfg.model.num_classes, 0),
            null_label=model.null_label if conditional else None, shift=shift, noise_scale=cfg.flow.noise_scale,
            min_denominator=cfg.flow.min_denominator, precision=cfg.train.precision,
            scales=lambda opts: guidance_scales(cfg, opts), interval_input=cfg.model.interval_input,
            guidance_input=cfg.model.guidance_input,
        ).for_options(cfg.sample)  # fmt: skip

    @classmethod
    def legacy_name(cls, cfg: Config, name: str) -> str:
        """Names an older repflow wrote: the network family's own renames (``model.``), and repflow <= 0.1's
        terms in a list (``objective.terms.<i>.``, REG (if on) before REPA)."""
        family = network_class(cfg.model)
        if name.startswith("model.") and hasattr(family, "legacy_name"):
            return "model." + family.legacy_name(cfg.model, name[len("model.") :])
        prefix = "objective.terms."
        if not name.startswith(prefix):
            return name
        index, _, rest = name[len(prefix) :].partition(".")
        if not index.isdigit():
            return name
        order = [s for s in ("reg", "repa") if getattr(cfg, s).enabled]
        return f"{prefix}{order[int(index)]}.{rest}" if int(index) < len(order) else name


class Objective(nn.Module):
    """The terms' trainable parts (saved as ``objective.safetensors``, never part of the inference weights)."""

    def __init__(self, terms: Mapping[str, Term]):
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))


__all__ = ["FlowMethod", "FlowMethodConfig", "Term", "enabled_terms", "guidance_scales", "stream_shapes"]

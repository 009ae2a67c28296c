"""The :class:`Method` protocol: everything the one training loop knows about what it trains.

A method is an ``nn.Module`` (what DDP / FSDP wrap) that

- owns named *networks* (submodules saved as ``<name>.safetensors``; ``ema_networks`` also get EMA copies),
- lists its training *phases* (one optimiser and schedule each: a flow model has one, a GAN decoder two),
- draws all of a step's randomness for the *global* batch (:meth:`draw`, sliced per rank and micro-step, so
  splits over processes and accumulation are exact),
- computes a loss per phase (:meth:`forward`), runs an :meth:`after_step` hook (EMA target encoders),
- makes a :meth:`preview` (sample grid or reconstructions) from EMA weights,
- and says which config keys its weights depend on (:meth:`resume_key`, checked on resume).

Generative methods also build a :class:`~repflow.flow.denoiser.Denoiser` from their inference networks
(:meth:`denoiser`): that is all ``repflow sample`` / ``eval`` use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..config import Config, TrainConfig, to_dict
from ..flow.loss import LossOutput


@dataclass
class TrainBatch:
    """One (micro-)batch as a method sees it."""

    x: Tensor  # clean data in model space (B, C, H, W), float
    y: Tensor | None  # class labels (B,) or None when unconditional
    features: dict[str, Tensor] = field(default_factory=dict)  # frozen-encoder outputs, "<i>.patch", "<i>.cls"
    images: Tensor | None = None  # pixels in [-1, 1] (B, C, H, W), when the method asks for them

    def chunk(self, index: int, size: int) -> TrainBatch:
        sl = slice(index * size, (index + 1) * size)
        return TrainBatch(
            self.x[sl],
            None if self.y is None else self.y[sl],
            {k: v[sl] for k, v in self.features.items()},
            None if self.images is None else self.images[sl],
        )

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class Draw:
    """Random tensors of one step, each with the global batch as its first dimension."""

    tensors: dict[str, Tensor]

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def chunk(self, index: int, size: int) -> Draw:
        sl = slice(index * size, (index + 1) * size)
        return Draw({k: v[sl] for k, v in self.tensors.items()})


@dataclass(frozen=True)
class Phase:
    """One optimiser: the networks it updates, its settings (lr, betas, decay, schedule, clipping, as in the
    ``train`` section) and the step it starts at (a GAN discriminator may start late)."""

    name: str
    networks: tuple[str, ...]
    optim: TrainConfig
    start_step: int = 0


@dataclass
class MethodEnv:
    """What a method is built with besides its config."""

    encoder_dims: list[int] = field(default_factory=list)  # widths of cfg.encoders, in order
    encoders: list = field(default_factory=list)  # the loaded frozen encoders (empty where none are loaded)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    codec: Any = None  # the run's codec (pixels <-> model space), for previews


class ResolvesConfig:
    """The two config-filling hooks a method and a flow method's term both have (``Method``, ``Term``)."""

    @classmethod
    def resolve_static(cls, cfg: Config) -> Config:
        """What can be filled without data or weights (``--dry-run``), e.g. a term's block from the architecture."""
        return cfg

    @classmethod
    def resolve(cls, cfg: Config, env: MethodEnv) -> Config:
        """What depends on the data or the encoders (called once, when training starts); default: the static part."""
        return cls.resolve_static(cfg)


class Method(ResolvesConfig, nn.Module):
    """Base class. Subclasses register with ``@METHODS.register(kind, ConfigClass)``."""

    #: networks with EMA copies (``train.ema_decays``); "model" is the one sampled from
    ema_networks: ClassVar[tuple[str, ...]] = ("model",)
    #: the batch must carry pixel images besides the model-space ``x``
    needs_images: ClassVar[bool] = False
    #: the method encodes pixels with a network it trains (REPA-E's VAE): the batch's ``x`` holds the images in
    #: [-1, 1], the run's codec only gives the latent shape (no encoding, no posterior noise, no latent cache)
    encodes_pixels: ClassVar[bool] = False
    #: the config's ``model`` section describes one of its networks (the start-up summary shows it)
    uses_model_section: ClassVar[bool] = True
    uses_data: ClassVar[bool] = True  # False: the method makes its own data (the manifold toy): no data line

    def __init__(self, cfg: Config, env: MethodEnv):
        super().__init__()
        self.cfg, self.env = cfg, env
        self.network_names: list[str] = []

    # -- networks ---------------------------------------------------------------------------------------------
    def add_network(self, name: str, module: nn.Module) -> nn.Module:
        """Register a network (an attribute of this module, so parameter names start with ``<name>.``)."""
        self.add_module(name, module)
        self.network_names.append(name)
        return module

    def networks(self) -> dict[str, nn.Module]:
        return {n: getattr(self, n) for n in self.network_names}

    def describe(self) -> str:
        """A few words for the start-up summary (the kind, and what is switched on)."""
        return self.cfg.method.kind

    def phases(self) -> list[Phase]:
        return [Phase("main", tuple(self.network_names), self.cfg.train)]

    # -- one step ---------------------------------------------------------------------------------------------
    def draw(self, batch: TrainBatch, n: int, generator: torch.Generator | None) -> Draw:
        """All randomness of a step for ``n`` samples (the global batch); shapes from this micro-batch."""
        return Draw({})

    def forward(self, batch: TrainBatch, draw: Draw, phase: str = "main", step: int = 0) -> LossOutput:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (``step`` = steps done), e.g. to move an EMA target encoder."""

    #: images in the fixed batch :meth:`monitor` sees at every log step (0: no monitoring)
    monitor_images: int = 0

    def monitor(self, batch: TrainBatch) -> tuple[dict[str, float], str]:
        """Numbers about the model itself, logged with the losses (DSD: its latent's effective rank), from a
        fixed batch under ``no_grad``; and a warning ("" for none), said once per run."""
        return {}, ""

    # -- previews ---------------------------------------------------------------------------------------------
    def preview(
        self, weights: Mapping[str, Mapping[str, Tensor]], batch: TrainBatch | None
    ) -> tuple[Tensor, int | None] | None:
        """A picture of the model (uint8 images and the grid row length) from full ``weights`` by network
        (EMA where it exists) in fresh, unsharded networks; ``batch``: a fixed batch of data when
        ``preview_needs_data``. Default: sample from the denoiser."""
        cfg = self.cfg
        if cfg.train.sample_num <= 0 or not self.env.codec.can_decode:
            return None
        nets = type(self).inference_networks(cfg)
        for name, net in nets.items():
            net.load_state_dict(weights[name])
            net.to(self.env.device).eval()
        denoiser = type(self).denoiser(cfg, nets, self.env.device, self.env.codec)
        if denoiser is None:
            return None
        from ..flow.generate import sample_images

        n = cfg.train.sample_num
        images, _ = sample_images(denoiser, cfg.sample, range(n))
        k = denoiser.num_classes
        return images, (k if 0 < k <= 16 and n % k == 0 else None)

    preview_needs_data: ClassVar[bool] = False

    # -- what the config decides ------------------------------------------------------------------------------
    @classmethod
    def needs_encoders(cls, cfg: Config) -> bool:
        return False

    @classmethod
    def resume_key(cls, cfg: Config) -> dict[str, Any]:
        """The config values a checkpoint's weights depend on: a resume with other values is refused."""
        key = {f"model.{k}": v for k, v in to_dict(cfg.model).items()}
        key["method.kind"] = cfg.method.kind
        return key

    @classmethod
    def inference_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        """Freshly built networks that sampling needs (weights loaded by the caller)."""
        return {}

    @classmethod
    def denoiser(cls, cfg: Config, networks: Mapping[str, nn.Module], device: torch.device, codec=None):
        """What generation integrates, or None for a method that does not generate."""
        return None

    @classmethod
    def generates(cls) -> bool:
        """Whether this method has a denoiser (samples images); False for one that only reconstructs them."""
        return cls.denoiser.__func__ is not Method.denoiser.__func__

    @classmethod
    def reconstructs(cls) -> bool:
        return cls.reconstructor.__func__ is not Method.reconstructor.__func__

    @classmethod
    def run_codec(cls, cfg: Config, networks: Mapping[str, nn.Module], device, vae: str = ""):
        """The codec a trained run generates through (``LoadedRun.codec``): the config's, or ``vae``'s weights;
        a method that trains its codec overrides this."""
        from ..codecs import codec_for

        return codec_for(cfg, device, vae)

    @classmethod
    def reconstructor(cls, cfg: Config, networks: Mapping[str, nn.Module], codec=None):
        """``images -> reconstructions`` (both in [-1, 1]) for a method that trains an autoencoder, else None:
        what ``repflow eval`` measures PSNR and rFID with."""
        return None

    @classmethod
    def legacy_name(cls, cfg: Config, name: str) -> str:
        """The current name of a parameter (``<network>.<key>``) saved by an older repflow (override where
        names moved); used for weight files and the optimiser state alike."""
        return name


__all__ = ["Draw", "LossOutput", "Method", "MethodEnv", "Phase", "TrainBatch"]

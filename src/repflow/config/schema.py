"""The sections of a run's configuration and the :class:`Config` holding them."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..errors import ConfigError
from ..registry import ARCHITECTURES, CODECS, METHODS, TERMS, Registry
from .fields import (
    Section,
    Tagged,
    _unknown_key_message,
    at_least,
    checked,
    default_variant,
    each,
    nonnegative,
    positive,
    probability,
    replace,
    unit,
)

# ----------------------------------------------------------------------------------------------------------
# Sections.


_AUTO_OR_COUNT = "must be auto or >= 0"


@dataclass(frozen=True)
class DataConfig(Section):
    PREFIX: ClassVar[str] = "data."
    dataset: Literal["fashion_mnist", "mnist", "image_folder", "file_list", "synthetic"] = "fashion_mnist"
    root: str = ""  # image_folder: the folder; file_list: the text file; else where the offline datasets are
    split: Literal["train", "test"] = "train"
    resolution: int = checked(32, positive)
    channels: Literal[1, 3] = 3  # greyscale data is replicated to 3 channels unless this is 1
    hflip: bool = False
    subset: int = checked(0, nonnegative)  # use only the first N images (0: all)
    # DataLoader workers; auto (or -1): chosen for the CPUs this process may use and the device (data/loader.py)
    workers: int | Literal["auto"] = checked("auto", lambda v: None if v == "auto" or v >= -1 else _AUTO_OR_COUNT)
    synthetic_size: int = checked(512, positive)  # images in the synthetic dataset (tests)
    # training images from files: ADM's centre crop, or RAE stage 1's short side to crop_resize (bicubic) and a
    # random resolution-sized window (previews, evaluation and statistics still see centre crops)
    crop: Literal["center", "random"] = "center"
    crop_resize: int = checked(0, nonnegative)  # crop=random: 0 is 1.5 x resolution (RAE: 384 at 256 px)

    def validate(self) -> None:
        if self.crop == "random" and self.dataset not in ("image_folder", "file_list"):
            raise ConfigError(f"config key 'data.crop' random crops images from files (data.dataset=image_folder or "
                              f"file_list), not {self.dataset}")  # fmt: skip
        if self.crop == "random" and 0 < self.crop_resize < self.resolution:
            raise ConfigError(f"config key 'data.crop_resize' must be >= data.resolution={self.resolution}, "
                              f"got {self.crop_resize}")  # fmt: skip


@dataclass(frozen=True)
class CodecConfig(Tagged):
    """Pixels <-> model space. The fields besides ``kind`` belong to the codec (see ``repflow.codecs``)."""

    PREFIX: ClassVar[str] = "codec."
    REGISTRY: ClassVar[Registry] = CODECS
    DEFAULT: ClassVar[str] = "pixel"
    kind: str = "pixel"


@dataclass(frozen=True)
class EncoderConfig(Section):
    """A frozen representation encoder (DINOv2, CLIP, SigLIP, MAE, or repflow's tiny ViT)."""

    PREFIX: ClassVar[str] = "encoders[]."
    name: str = "dinov2-vitb14"  # see `repflow.encoders.ENCODERS`
    path: str = ""  # local file / directory or hub id; "" uses the name's default hub id
    format: Literal["auto", "timm", "transformers", "torchhub", "repflow"] = "auto"
    resolution: int = checked(0, nonnegative)  # input size; 0: 224, or 448 when the data is 512 px
    cache: str = ""  # directory of cached features (repflow cache features); "" runs the encoder each step


@dataclass(frozen=True)
class ModelConfig(Tagged):
    """The network. Fields shared by every family; a family adds its own (see ``repflow.models``)."""

    PREFIX: ClassVar[str] = "model."
    REGISTRY: ClassVar[Registry] = ARCHITECTURES
    TAG: ClassVar[str] = "family"
    DEFAULT: ClassVar[str] = "sit"
    family: str = "sit"
    arch: str = "SiT-S/2"  # a named size of the family; depth/width/heads/patch of 0 are taken from it
    depth: int = checked(0, nonnegative)
    hidden_size: int = checked(0, nonnegative)
    num_heads: int = checked(0, nonnegative)
    patch_size: int = checked(0, nonnegative)
    num_classes: int = checked(-1, at_least(-1))  # -1: from the dataset; 0: unconditional
    class_dropout: float = checked(0.1, probability)  # label drop rate for CFG (a null row is added if > 0)
    input_size: int = checked(0, nonnegative)  # spatial size the network sees; 0: from data and codec
    in_channels: int = checked(0, nonnegative)  # 0: from data channels and codec
    interval_input: bool = False  # a second time input, the interval h = t - r (MeanFlow sets it; sit, jit, dit_dh)
    guidance_input: bool = False  # iMF: the guidance scale w and its interval (t_lo, t_hi) as inputs (MeanFlow sets it)
    velocity_head: int = checked(0, nonnegative)  # iMF: a second head of this many final blocks predicting v (sit, jit)

    @classmethod
    def infer_tag(cls, data: Mapping) -> str:
        """The family named by the arch prefix ("JiT-B/16" -> jit), else SiT."""
        prefix = str(data.get("arch", "")).split("-", 1)[0].lower()
        return prefix if prefix in ARCHITECTURES and prefix != "dit" else cls.DEFAULT


@dataclass(frozen=True)
class MethodConfig(Tagged):
    """What the training loop trains: ``flow`` (SiT and its terms) or another method (``repflow.methods``)."""

    PREFIX: ClassVar[str] = "method."
    REGISTRY: ClassVar[Registry] = METHODS
    DEFAULT: ClassVar[str] = "flow"
    kind: str = "flow"


@dataclass(frozen=True)
class TimeConfig(Section):
    PREFIX: ClassVar[str] = "flow.time."
    kind: Literal["uniform", "logit_normal", "lognormal"] = "uniform"
    mean: float = 0.0  # logit-normal location (t = sigmoid(mean + std * n), t = 1 is noise)
    std: float = checked(1.0, positive)
    shift: float = checked(1.0, positive)  # t <- s t / (1 + (s - 1) t); 1 disables
    shift_base_dim: int = checked(0, nonnegative)  # if > 0, s = sqrt(data_dim / shift_base_dim) (RAE: 4096)


@dataclass(frozen=True)
class FlowConfig(Section):
    PREFIX: ClassVar[str] = "flow."
    path: Literal["linear", "cosine"] = "linear"
    prediction: Literal["v", "x", "eps"] = "v"  # what the network outputs
    loss_space: Literal["v", "x", "eps"] = "v"  # where the squared error is taken
    min_denominator: float = checked(0.05, nonnegative)  # divisions by t (or alpha) are clipped (JiT: 0.05)
    noise_scale: float = checked(1.0, positive)  # the image's noise is noise_scale * N(0, I) (JiT: 2 at 512 px)
    internal_weight: float = checked(1.0, nonnegative)  # loss weight of a network's internal output (RAEv2: 1)
    time: TimeConfig = field(default_factory=TimeConfig)


def ema_choice(v: float) -> str | None:
    return None if v == -1 or 0 <= v < 1 else "must be -1, 0 or a decay in (0, 1)"


@dataclass(frozen=True)
class TrainEvalConfig(Section):
    """What ``train.eval_every`` measures: samples of the EMA drawn as ``repflow eval`` of the step's checkpoint
    would draw them (the run's ``sample`` section, changed by the fields set here), against a reference."""

    PREFIX: ClassVar[str] = "train.eval."
    metrics: tuple[str, ...] = ("fid",)  # names as `repflow eval --metrics` (checked when training starts)
    num_samples: int = checked(1000, positive)
    sampler: str = ""  # "": sample.sampler; else one of its choices
    steps: int = checked(0, nonnegative)  # 0: sample.steps
    cfg: float = checked(-1.0, lambda v: None if v == -1 or v >= 0 else "must be -1 (sample.cfg) or >= 0")
    cfg_interval: tuple[float, ...] = checked((), each(unit))  # (): sample.cfg_interval; else (lo, hi)
    ema: float = checked(-1.0, ema_choice)  # -1: the first of train.ema_decays, 0: the raw weights
    reference: str = ""  # as `repflow eval --ref` (dataset[:split], folder, ADM .npz); "": the training data
    ref_count: int = checked(50000, nonnegative)  # images of a dataset / folder reference (0: all)
    keep_samples: bool = False  # keep the PNGs after they are measured (eval.json is always kept)
    # weights of the encoder spaces the metrics name (fd_dinov2, ...), as `repflow eval --encoder-path`:
    # ["dinov2-vitl14=/weights/dinov2.pth"]; a space without one uses the encoder's default hub weights
    encoder_paths: tuple[str, ...] = ()
    kid_subsets: int = checked(100, positive)  # KID: as `repflow eval --kid-subsets`
    kid_subset_size: int = checked(1000, at_least(2))

    def validate(self) -> None:
        # "fid,is" (a dotted override) reads as one string: stored as the list of names
        names = tuple(m.strip().lower() for item in self.metrics for m in str(item).split(",") if m.strip())
        if not names:
            raise ConfigError("config key 'train.eval.metrics' names no metric (e.g. [fid])")
        object.__setattr__(self, "metrics", names)
        paths = tuple(str(p).strip() for p in self.encoder_paths)
        bad = next((p for p in paths if not all(part.strip() for part in p.partition("=")[::2])), None)
        if bad is not None:
            raise ConfigError(f"config key 'train.eval.encoder_paths' needs NAME=PATH items (e.g. "
                              f"dinov2-vitl14=/weights/dinov2.pth), got {bad!r}")  # fmt: skip
        object.__setattr__(self, "encoder_paths", paths)
        samplers = typing.get_args(typing.get_type_hints(SampleConfig)["sampler"])  # one list of solvers: sample's
        if self.sampler and self.sampler not in samplers:
            raise ConfigError(f"config key 'train.eval.sampler' must be \"\" (sample.sampler) or one of "
                              f"{', '.join(samplers)}, got {self.sampler!r}")  # fmt: skip
        if len(self.cfg_interval) not in (0, 2) or (self.cfg_interval and self.cfg_interval[0] > self.cfg_interval[1]):
            raise ConfigError(f"config key 'train.eval.cfg_interval' needs [] or [lo, hi] with lo <= hi, got "
                              f"{list(self.cfg_interval)}")  # fmt: skip

    def sampling_changes(self) -> dict[str, Any]:
        """The fields of the ``sample`` section this evaluation sets (the others keep the run's)."""
        changes = {"sampler": self.sampler, "steps": self.steps, "cfg": self.cfg, "cfg_interval": self.cfg_interval}
        unset = {"sampler": "", "steps": 0, "cfg": -1.0, "cfg_interval": ()}
        return {k: v for k, v in changes.items() if v != unset[k]}


TRACKERS = ("tensorboard", "wandb", "none")  # repflow.train.trackers


def trackers(v: tuple[str, ...]) -> str | None:
    unknown = [t for t in v if t not in TRACKERS]
    if unknown:
        return f"names unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)} (a list allowed)"
    if not v or ("none" in v and len(v) > 1):
        return "must name trackers, or be none alone"
    return None


@dataclass(frozen=True)
class TrainConfig(Section):
    PREFIX: ClassVar[str] = "train."
    steps: int = checked(1000, nonnegative)
    init_from: str = ""  # a run or checkpoint whose matching weights start a new run (train/init_from.py)
    batch_size: int = checked(64, positive)  # global batch (all processes, all accumulation steps)
    grad_accum: int = checked(1, positive)
    lr: float = checked(1e-4, nonnegative)
    betas: tuple[float, float] = checked((0.9, 0.999), each(probability))
    weight_decay: float = checked(0.0, nonnegative)
    adam_eps: float = checked(1e-8, positive)
    # muon: torch.optim.Muon on 2-D weights, AdamW (betas, adam_eps) on the rest; README "Training loop"
    optimizer: Literal["adamw", "muon"] = "adamw"
    adamw_lr: float = checked(-1.0, lambda v: None if v == -1 or v >= 0 else "must be -1 (train.lr) or >= 0")
    muon_momentum: float = checked(0.95, probability)
    muon_nesterov: bool = True
    muon_ns_steps: int = checked(5, lambda v: None if 1 <= v < 100 else "must lie in [1, 99]")  # torch: < 100
    # (a, b, c) of every Newton-Schulz step; torch's default (Keller Jordan's). One triple for all steps: torch
    # cannot take Polar Express's per-step coefficients (RAEv2), see README
    muon_ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
    muon_adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw"  # RAEv2's "rms_norm" is the first
    muon_embeddings: bool = True  # nn.Embedding tables (2-D) to Muon, as RAEv2; false: to AdamW
    # lr: warmup from zero, hold, then constant / linear / cosine decay to lr_final at decay_end, kept after it
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = checked(0, nonnegative)
    hold_steps: int = checked(0, nonnegative)  # lr held after the warmup before the decay starts
    decay_end: int = checked(0, nonnegative)  # the step the decay reaches lr_final; 0: the last step
    lr_final: float = checked(0.0, nonnegative)  # end value of the linear / cosine decay
    grad_clip: float = checked(1.0, nonnegative)  # 0 disables
    ema_decays: tuple[float, ...] = checked((0.9999,), each(lambda d: None if 0 < d < 1 else "must lie in (0, 1)"))
    ema_warmup: bool = False  # decay min(d, (1 + n) / (10 + n)) after n steps: useful for short runs
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or fully shard (FSDP2)
    compile: bool = False
    # intra-op CPU threads; auto: OMP_NUM_THREADS if set, else the CPUs left to this process by its loader workers
    threads: int | Literal["auto"] = checked("auto", lambda v: None if v == "auto" or v > 0 else "must be auto or > 0")
    grad_checkpointing: bool = False
    log_every: int = checked(50, positive)
    # where logged values, preview grids and the config go besides metrics.jsonl: README "Track runs"
    report_to: tuple[str, ...] = checked(("tensorboard",), trackers)
    ckpt_every: int = checked(1000, nonnegative)  # 0: only at the end (and before step hooks), as sample_every
    keep_ckpts: int = checked(2, nonnegative)  # 0 keeps all
    sample_every: int = checked(0, nonnegative)  # preview every N steps (0: only at the end)
    sample_num: int = checked(64, nonnegative)  # images in a preview (0: no previews)
    # evaluation during training: every N steps and at the last (0: off), checkpointed first; README "Evaluation"
    eval_every: int = checked(0, nonnegative)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)

    def validate(self) -> None:
        start = self.warmup_steps + self.hold_steps
        if self.decay_end and self.decay_end < start:
            raise ConfigError(f"config key 'train.decay_end' must be 0 (the last step) or >= train.warmup_steps + "
                              f"train.hold_steps = {start}, got {self.decay_end}")  # fmt: skip
        if self.optimizer == "muon" and self.parallel == "fsdp":  # Muon orthogonalises whole matrices
            raise ConfigError("config key 'train.optimizer' is muon, which does not run under train.parallel=fsdp "
                              "(Muon needs whole matrices, FSDP shards them): use train.parallel=ddp")  # fmt: skip
        if self.eval_every and self.eval.ema > 0 and self.eval.ema not in self.ema_decays:
            raise ConfigError(f"config key 'train.eval.ema' is {self.eval.ema:g}, which is not one of train.ema_decays "
                              f"{list(self.ema_decays)}; use -1 (the first) or 0 (the raw weights)")  # fmt: skip


Sampler = Literal["euler", "heun", "sde", "dopri5", "dpmpp_2m", "mean"]  # the solvers: flow/solvers.py (mean: MeanFlow)
SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)
FIXED_GRID_SAMPLERS = ("euler", "heun", "dpmpp_2m")  # integrate on time_grid(steps, shift, grid)
CfgRule = Literal["step", "evaluation_strict"]  # where the guidance interval is decided: flow/guidance.py
CFG_RULES: tuple[str, ...] = typing.get_args(CfgRule)


@dataclass(frozen=True)
class SampleConfig(Section):
    PREFIX: ClassVar[str] = "sample."
    sampler: Sampler = "heun"
    steps: int = checked(50, positive)
    cfg: float = 1.0
    cfg_interval: tuple[float, float] = checked((0.0, 1.0), each(unit))  # guide for t in [lo, hi] ...
    # ... as the family's authors decide it (flow/guidance.py): step (SiT/REPA/REG: once per solver step at its
    # start, inclusive) or evaluation_strict (JiT: at every evaluation, strict bounds)
    cfg_rule: CfgRule = "step"
    # guide only the image's first n channels (the rest keep the conditional velocity): LightningDiT's official
    # rule (3, a DiT reproduction leftover its presets carry); 0: every channel
    cfg_channels: int = checked(0, nonnegative)
    # DDT: run the condition encoder every n network evaluations and reuse its output in between (1: every one)
    encoder_reuse: int = checked(1, positive)
    sde_t_last: float = checked(0.04, lambda v: None if 0 < v < 1 else "must lie in (0, 1)")
    rtol: float = checked(1e-4, positive)  # dopri5
    atol: float = checked(1e-4, positive)
    ema: float = checked(-1.0, ema_choice)
    batch_size: int = checked(64, positive)
    seed: int = checked(0, nonnegative)
    cfg_cls: float = -1.0  # REG: guidance scale of the class token; -1: same as cfg
    shift: float = checked(-1.0, lambda v: None if v == -1 or v > 0 else "must be -1 (the training shift) or > 0")
    guide: str = ""  # AutoGuidance: a weaker run or checkpoint whose velocity guides this one's
    guide_scale: float = -1.0  # its scale (RAE: 1.42); -1: sample.cfg
    grid: Literal["uniform", "rae"] = "uniform"  # rae: the official RAE grid (steps points, ending at t > 0)
    internal_guidance: float = 1.0  # RAEv2: the full output guided away from the internal one (1: off)
    internal_interval: tuple[float, float] = checked((0.0, 1.0), each(unit))  # ... for t in [lo, hi]

    def validate(self) -> None:
        for key in ("cfg_interval", "internal_interval"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ConfigError(f"config key 'sample.{key}' needs lo <= hi, got {(lo, hi)!r}")
        if self.grid != "uniform" and self.sampler not in FIXED_GRID_SAMPLERS:
            raise ConfigError(f"sample.grid={self.grid} is a grid of the {', '.join(FIXED_GRID_SAMPLERS)} samplers, "
                              f"not of {self.sampler}")  # fmt: skip


CORE = ("name", "seed", "method", "data", "codec", "encoders", "model", "flow", "train", "sample")


@dataclass(frozen=True)
class Config:
    name: str = "run"
    seed: int = 0
    method: MethodConfig = field(default_factory=lambda: default_variant(MethodConfig))
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=lambda: default_variant(CodecConfig))
    encoders: tuple[EncoderConfig, ...] = ()  # frozen encoders (REPA / REG use them; REG the first)
    model: ModelConfig = field(default_factory=lambda: default_variant(ModelConfig))
    flow: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # sections registered by the flow method's terms (repa, reg, ...), read as attributes: ``cfg.repa``
    terms: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.terms) - set(TERMS.names())
        if unknown:
            raise ConfigError(_unknown_key_message(sorted(unknown)[0], _top_level_keys()))
        full = {e.name: self.terms.get(e.name) or e.config() for e in TERMS.entries()}
        object.__setattr__(self, "terms", full)
        if self.data.crop == "random" and (getattr(self.codec, "cache", "") or any(e.cache for e in self.encoders)):
            raise ConfigError("data.crop=random: caches (codec.cache, encoders[].cache) hold centre crops; use "
                              "data.crop=center or no cache")  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        terms = self.__dict__.get("terms")
        if terms is not None and name in terms:
            return terms[name]
        raise AttributeError(f"Config has no section {name!r}")

    def replace(self, /, **changes: Any) -> Config:
        """A copy with sections (term sections too) or dotted keys changed: ``cfg.replace(**{"repa.depth": 4})``."""
        return replace(self, **changes)


def _top_level_keys() -> list[str]:
    return [*CORE, *TERMS.names()]

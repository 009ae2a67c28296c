"""The public Python API: load a run and sample from it, train from a preset, evaluate. Usable in a notebook::

    import repflow
    model = repflow.load("runs/fashion")                        # run directory or checkpoint
    images = model.sample(classes=[3, 7], per_class=4, seed=1)  # (8, C, H, W) uint8, class 3 then class 7
    pils = model.sample(num=16, cfg=1.5, sampler="heun", steps=50, as_pil=True)
    result = repflow.fit("demo-fashion-reg", ["train.steps=2000"], out="runs/fashion")
    scores = repflow.evaluate("runs/fashion", num_samples=5000)  # {"fid": ..., ...}

Sample ``i`` of a call draws its noise from the stream ``(seed, i)``, so the same ``seed`` and index give the
same image whatever the batch size or the device count; ``indices`` picks which samples of the stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import Config, load_config, replace
from .errors import ConfigError

__all__ = ["Model", "evaluate", "fit", "load", "load_config", "presets", "save_grid", "sweep"]


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Model:
    """A trained run, ready to generate: its config, denoiser and codec (see :func:`load`)."""

    cfg: Config
    denoiser: Any
    path: Path
    ema: float | str
    guide_model: Model | None = None
    class_names: list[str] = dataclasses.field(default_factory=list)  # the training data's, by label; [] unknown

    @property
    def num_classes(self) -> int:
        return self.denoiser.num_classes

    def sample(
        self,
        num: int | None = None,
        *,
        classes: Sequence[int | str] | None = None,
        per_class: int = 1,
        indices: Sequence[int] | None = None,
        seed: int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
        batch_size: int | None = None,
        cfg_cls: float | None = None,
        shift: float | None = None,
        guide: Model | str | None = None,
        guide_scale: float | None = None,
        as_pil: bool = False,
        **options: Any,
    ) -> Tensor | list:
        """Generate images: (N, C, H, W) uint8, or a list of PIL images with ``as_pil``.

        ``classes``: labels or class names (``model.class_names``; case and ``_``/``-``/spaces ignored) to
        generate, ``per_class`` each (in the order given); otherwise ``num`` samples with balanced labels
        (sample i has class i mod K). ``indices``: which samples of the seed's stream (default 0..N-1). Unset
        sampling options keep the run's ``sample`` section. ``cfg_cls``: REG's class-token scale (-1: ``cfg``);
        ``shift``: the time shift of the sampling grid (-1: the training shift). ``guide``: another model (or
        its path) for AutoGuidance, at ``guide_scale`` (-1: ``cfg``); without it classifier-free guidance uses
        this model's null label. ``options``: any other field of the ``sample`` section (``grid="rae"``,
        ``internal_guidance=1.78``, ...).
        """
        fields = {f.name for f in dataclasses.fields(self.cfg.sample)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"sample() has no option {unknown[0]!r}; the sample section's fields are "
                             f"{', '.join(sorted(fields))}")  # fmt: skip
        named = {
            "seed": seed,
            "sampler": sampler,
            "steps": steps,
            "cfg": cfg,
            "cfg_interval": cfg_interval,
            "batch_size": batch_size,
            "cfg_cls": cfg_cls,
            "shift": shift,
            "guide_scale": guide_scale,
        }
        changes = {k: v for k, v in {**named, **options}.items() if v is not None}
        opts = replace(self.cfg.sample, **changes)
        labels = None
        if num is not None and num < 0 or per_class < 0:
            raise ValueError(f"counts must be >= 0, got num={num}, per_class={per_class}")
        if classes is not None:
            from .sample.runs import resolve_classes

            chosen = resolve_classes(list(classes), self.class_names, self.num_classes) or []
            labels = torch.tensor([c for c in chosen for _ in range(per_class)], dtype=torch.long)
            num = len(labels)
        if indices is None:
            if num is None or num <= 0:
                raise ValueError("say how many images: num=N, or classes=[...] with per_class=M")
            indices = range(num)
        elif labels is not None and len(indices) != len(labels):
            raise ValueError(f"{len(indices)} indices for {len(labels)} labelled samples")
        from .flow.generate import sample_images

        guide_model = load(guide, device=self.denoiser.device) if isinstance(guide, str | Path) else guide
        guide_model = guide_model or self.guide_model
        images, _ = sample_images(self.denoiser, opts, indices, labels,
                                  guide=guide_model.denoiser if guide_model is not None else None)  # fmt: skip
        if as_pil:
            from .runtime.images import to_pil

            return [to_pil(img) for img in images]
        return images


def load(
    run_or_ckpt: str | Path, ema: float | None = None, device: str | torch.device = "auto", vae: str = ""
) -> Model:
    """Load a run (its newest checkpoint), a checkpoint, a ``repflow export`` folder or a Hub id
    (``org/name[@revision]``, through the Hugging Face cache) for sampling. ``ema``: -1 the first EMA decay, 0 the raw
    weights, else that decay. ``vae``: decode with other VAE weights than training used. The setting ``repflow
    sweep --write`` stored in the run (``sampling.json``) is the default of ``sample()`` (and of ``ema``), said
    on stdout."""
    from .runtime.lookup import resolve_checkpoint
    from .sample.load import load_run
    from .sample.swept import with_swept

    changes, ema, note = with_swept(resolve_checkpoint(run_or_ckpt), {}, ema)
    if note:
        print(f"repflow: {note}", flush=True)
    run = load_run(run_or_ckpt, ema=ema, device=_device(device), vae=vae)
    if run.denoiser is None:
        raise ConfigError(f"{run.ckpt.path} was trained with method {run.cfg.method.kind}, which does not generate")
    cfg = run.cfg.replace(sample=replace(run.cfg.sample, **changes)) if changes else run.cfg
    return Model(cfg, run.denoiser, run.ckpt.path, run.ema, class_names=run.ckpt.class_names())


def fit(
    config: str | Config,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    resume: bool = True,
    stop_at: int | None = None,
):
    """Train a preset / YAML file (with dotted ``overrides``) or a :class:`Config` into ``out`` (resuming a run
    already there). Returns the :class:`~repflow.train.loop.TrainResult`. (Named ``fit`` because
    ``repflow.train`` is the package of the training loop.)"""
    from .eval.online import training_hooks
    from .train.loop import train as run_training

    if isinstance(config, Config):
        if overrides:
            raise ValueError("overrides apply to a preset or YAML name; change a Config with cfg.replace(...)")
        cfg = config
    else:
        cfg = load_config(config, list(overrides))
        if config in presets():  # a shipped preset on one's own folder: the images decide the shapes
            from .init_preset import fit_preset_to_folder

            cfg, note = fit_preset_to_folder(cfg, list(overrides))
            if note:
                print(f"repflow: {note}", flush=True)
    out = Path(out or f"runs/{cfg.name}")
    return run_training(cfg, out, resume=resume, stop_at=stop_at, hooks=training_hooks(cfg))


def evaluate(
    samples: str | Path,
    ref: str = "",
    num_samples: int = 0,
    metrics: str | None = None,
    ref_count: int = 50000,
    inception: str | None = None,
    reconstruct: bool | None = None,
    split: str = "test",
    encoder_paths: dict[str, str] | None = None,
    **sampling: Any,
) -> dict[str, float]:
    """FID (and sFID, IS, precision, recall, KID) of a folder of images, an ADM ``.npz`` or a run (``num_samples``
    generated with the run's sampling options, changed by ``sampling``: ``steps=``, ``cfg=``, ...). ``ref``:
    an ADM ``.npz``, a folder or ``dataset[:split]``; default for a run: its training data. An autoencoder run
    (``reconstruct``, the default for one that does not generate) is measured on reconstructions of the first
    ``num_samples`` images of ``split``: rFID against that split, and ``psnr``. ``metrics``: e.g.
    ``"fid,kid,fd_dinov2"`` (see ``repflow eval --help``); ``encoder_paths``: weights of the encoder spaces
    (``{"dinov2-vitl14": "/weights/dinov2_vitl14_pretrain.pth"}``)."""
    from .eval.evaluate import EvalOptions, parse_metrics
    from .eval.evaluate import evaluate as run_evaluation
    from .eval.extractors import Extractors
    from .eval.inception import load_inception
    from .eval.reconstruct import reconstruct_run
    from .eval.runs import default_reference, generates, is_run, samples_source
    from .eval.sources import open_source
    from .sample.runs import sample_run

    chosen, explicit = parse_metrics(metrics)
    device = _device("auto")
    nets = Extractors(lambda: load_inception(inception, "tf", None, device, explicit and "is" in chosen),
                      encoder_paths, device)  # fmt: skip
    target = Path(samples)
    data_root, extra = "", {}
    if is_run(target):
        if num_samples <= 0:
            raise ValueError("evaluating a run needs num_samples=N (samples to generate; FID-50K: 50000)")
        ema = sampling.pop("ema", None)  # None: the run's swept EMA, else its first
        if reconstruct or (reconstruct is None and not generates(target)):
            recon = reconstruct_run(target, num_samples, -1.0 if ema is None else ema, split, progress=False)
            source, ref, data_root = samples_source(recon.folder, recon.count), ref or recon.reference, recon.data_root
            extra = {"psnr": recon.psnr}
        else:
            run = sample_run(target, num_samples, sampling, ema, subdir="eval")
            default, data_root = default_reference(run.cfg)
            source, ref = samples_source(run.folder, num_samples), ref or default
    else:
        if sampling:
            raise ValueError(f"sampling options {sorted(sampling)} apply to a run, not to {target}")
        source = open_source(target, max(num_samples, 0))
    opts = EvalOptions(metrics=chosen, explicit=explicit, reference=ref, ref_count=ref_count, data_root=data_root)
    return {**run_evaluation(source, nets, opts).metrics, **extra}


def sweep(
    run: str | Path,
    *,
    cfg: Sequence[float] | None = None,
    interval: Sequence[tuple[float, float]] | None = None,
    steps: Sequence[int] | None = None,
    sampler: Sequence[str] | None = None,
    ema: Sequence[float] | None = None,
    num_samples: int = 1000,
    metrics: str = "fid",
    by: str = "",
    ref: str = "",
    ref_count: int = 50000,
    seed: int | None = None,
    out: str | Path | None = None,
    write: bool = False,
    keep_samples: bool = False,
    inception: str | None = None,
    encoder_paths: dict[str, str] | None = None,
):
    """Measure a checkpoint's samples over the grid ``cfg`` x ``interval`` x ``steps`` x ``sampler`` x ``ema``
    (an axis left None keeps the run's setting), the same seeds and balanced labels in every cell; returns the
    :class:`~repflow.eval.sweep.SweepResult` (rows, best, sweep.csv, sweep.png). ``metrics``, ``encoder_paths``:
    as for :func:`evaluate` (``"fid,kid,fd_dinov2"``; the best cell is chosen by ``by``, default the first).
    ``write``: store the best as the run's default for :func:`load`, ``repflow sample`` and ``repflow eval``.
    Finished cells are kept on a rerun."""
    from .eval.evaluate import parse_metrics
    from .eval.extractors import Extractors
    from .eval.inception import load_inception
    from .eval.sweep import SweepSpec, run_sweep

    grid = {"cfg": cfg, "cfg_interval": interval, "steps": steps, "sampler": sampler, "ema": ema}
    spec = SweepSpec(str(run), {k: list(v) for k, v in grid.items() if v is not None}, num_samples, metrics, by, ref,
                     ref_count, seed=seed, out=str(out) if out else None, write=write, keep_samples=keep_samples,
                     encoder_paths=dict(encoder_paths or {}))  # fmt: skip
    device, want_logits = _device("auto"), "is" in parse_metrics(metrics)[0]
    nets = Extractors(lambda: load_inception(inception, "tf", None, device, want_logits), spec.encoder_paths, device)
    return run_sweep(spec, nets, progress=False)


def save_grid(images: Tensor | Sequence, path: str | Path, nrow: int | None = None) -> Path:
    """Write ``images`` (what :meth:`Model.sample` returns: (N, C, H, W) uint8, or PIL images) as one grid PNG,
    ``nrow`` images a row (default: a square); returns the path."""
    from .data.transforms import pil_to_uint8
    from .runtime.images import save_grid as write

    if not isinstance(images, Tensor):
        images = torch.stack([pil_to_uint8(im) for im in images])
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"save_grid takes (N, C, H, W) uint8 images or PIL images, got {tuple(images.shape)} "
                         f"{images.dtype}")  # fmt: skip
    return write(images, path, nrow)


def presets() -> list[str]:
    """The names of the shipped presets (``repflow presets`` describes them)."""
    from .config import list_presets

    return list_presets()

"""Samples of a trained run in a folder: the one function behind ``repflow sample``, ``repflow eval`` of a run,
the convergence benchmark and the Python API.

The default folder name holds every setting the images depend on (checkpoint, EMA, sampler and steps,
guidance scale, interval and its rule, class-token scale, time shift, seed, chosen classes, guide run), so two commands
with different settings never share a folder; the folder's ``samples.json`` manifest checks it anyway.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, SampleConfig, replace
from ..runtime.checkpoint import CKPT_RE, ema_name
from ..runtime.distributed import DistInfo
from ..runtime.lookup import resolve_checkpoint
from .load import load_run
from .sharded import Generated, describe_labels, generate_sharded, sampling_manifest
from .swept import with_swept


def class_key(name: str) -> str:
    """A class name as users type it: "Ankle boot", "ankle_boot" and "ankle-boot" are one name."""
    return re.sub(r"[\s_\-.]+", "", name).casefold()


def resolve_classes(spec: str | list | None, class_names: list[str], num_classes: int) -> list[int] | None:
    """``"3,7"`` or ``"sneaker,bag"`` (the run's class names, in any case, with spaces, ``_`` or ``-`` alike) ->
    label indices; None for all classes."""
    if spec in (None, "", []):
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    if num_classes <= 0:
        raise ValueError("the model is unconditional: it has no classes to choose from")
    out = []
    keys = [class_key(n) for n in class_names]
    for item in items:
        text = str(item).strip()
        if isinstance(item, int) or text.lstrip("-").isdigit():
            out.append(int(text))
        elif text in class_names:  # exact first: names that differ only in case stay apart
            out.append(class_names.index(text))
        elif keys.count(class_key(text)) == 1:
            out.append(keys.index(class_key(text)))
        else:
            known = ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else "")
            raise ValueError(f"unknown class {text!r}: give indices 0..{num_classes - 1}"
                             + (f" or names ({known})" if class_names else ""))  # fmt: skip
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} do not exist; the model has classes 0..{num_classes - 1}")
    return out


def folder_name(ckpt_name: str, opts: SampleConfig, ema: float | str, classes: list[int] | None = None,
                guide: str = "") -> str:  # fmt: skip
    """``ckpt-00004000-ema-0.9999-heun50-cfg1.5-int0-0.7-seed0`` and so on: every setting that matters."""
    parts = [ckpt_name, ema_name(ema) if isinstance(ema, float) else "raw", f"{opts.sampler}{opts.steps}"]
    parts.append(f"cfg{opts.cfg:g}")
    if tuple(opts.cfg_interval) != (0.0, 1.0):
        parts.append(f"int{opts.cfg_interval[0]:g}-{opts.cfg_interval[1]:g}")
    if opts.cfg_rule != SampleConfig.cfg_rule:
        parts.append(f"rule-{opts.cfg_rule}")
    if opts.encoder_reuse != 1:
        parts.append(f"reuse{opts.encoder_reuse}")
    if opts.cfg_channels:
        parts.append(f"ch{opts.cfg_channels}")
    if opts.cfg_cls >= 0:
        parts.append(f"cls{opts.cfg_cls:g}")
    if opts.shift > 0:
        parts.append(f"shift{opts.shift:g}")
    if opts.grid != "uniform":
        parts.append(f"grid-{opts.grid}")
    if opts.internal_guidance != 1.0:
        lo, hi = opts.internal_interval
        parts.append(f"ig{opts.internal_guidance:g}" + (f"-{lo:g}-{hi:g}" if (lo, hi) != (0.0, 1.0) else ""))
    if opts.sampler == "sde" and opts.sde_t_last != SampleConfig.sde_t_last:
        parts.append(f"tlast{opts.sde_t_last:g}")
    if opts.sampler == "dopri5":
        parts.append(f"tol{opts.rtol:g}-{opts.atol:g}")
    if classes:
        parts.append("classes" + "_".join(map(str, classes)))
    if guide:
        parts.append("guide-" + Path(guide).name)
    parts.append(f"seed{opts.seed}")
    return "-".join(parts)


def few_steps_warning(cfg: Config, opts: SampleConfig) -> str:
    """A warning for one solver step on a flow model (it still runs): one Euler step from noise lands on the
    mean of the data; only a MeanFlow run (``method.kind=meanflow``) is trained to jump in one step."""
    if opts.steps > 1 or cfg.model.interval_input or opts.sampler in ("sde", "dopri5"):
        return ""
    return (
        f"--steps 1 on a flow model ({cfg.method.kind}, {opts.sampler}): one step from noise gives blurred "
        "averages; a flow model needs more steps (25-50), one-step generation needs a MeanFlow run "
        "(method.kind=meanflow)"
    )


@dataclass
class RunSamples:
    folder: Path
    cfg: Config
    opts: SampleConfig
    provenance: dict  # what the images depend on (for a results file)
    made: Generated
    classes: list[int] | None


def sample_run(
    run: str | Path,
    num: int,
    changes: dict | None = None,
    ema: float | None = None,
    folder: str | Path | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
    classes: str | list | None = None,
    guide: str = "",
    vae: str = "",
    subdir: str = "samples",
    swept: bool = True,
) -> RunSamples:
    """Make sure samples ``0..num-1`` of ``run`` exist as PNGs in ``folder`` (default
    ``<run>/<subdir>/<settings>``), generating the missing ones on this process's shard. Options not given
    (``changes``; ``ema`` None) come from the setting ``repflow sweep --write`` stored in the run if ``swept``
    (said on stdout), else from the run's ``sample`` section (EMA: the first decay)."""
    dist = dist or DistInfo()
    changes, note = changes or {}, ""
    if swept:
        changes, ema, note = with_swept(resolve_checkpoint(run), changes, ema)
    if note and dist.is_main:
        print(f"repflow: {note}", flush=True)
    loaded = load_run(str(run), ema=-1.0 if ema is None else ema, device=dist.device, vae=vae)
    cfg, ckpt = loaded.cfg, loaded.ckpt
    if loaded.denoiser is None:
        raise ValueError(f"{ckpt.path} was trained with method {cfg.method.kind}, which does not generate images")
    opts = replace(cfg.sample, **changes)
    if vae and cfg.codec.kind == "pixel":  # options that would be recorded in the manifest and do nothing
        raise ValueError(f"--vae: {ckpt.path} was trained in pixel space; there is no latent to decode")
    if opts.cfg_cls >= 0 and "cls" not in getattr(loaded.denoiser, "shapes", {}):
        raise ValueError(f"--cfg-cls scales REG's class token, and {ckpt.path} denoises none")
    if progress and dist.is_main and loaded.ema_warning():
        print(f"warning: {loaded.ema_warning()}", file=sys.stderr)
    from ..flow.generate import check_sampler

    check_sampler(loaded.denoiser, opts)
    if progress and dist.is_main and few_steps_warning(cfg, opts):
        print(f"warning: {few_steps_warning(cfg, opts)}", file=sys.stderr)
    chosen = resolve_classes(classes, ckpt.class_names(), cfg.model.num_classes)
    used_ema = loaded.ema
    if guide:
        opts = replace(opts, guide=str(guide))
    guide = opts.guide
    guide_run = load_run(guide, device=dist.device) if guide else None
    if guide_run is not None and guide_run.denoiser is None:
        raise ValueError(f"--guide {guide}: its method ({guide_run.cfg.method.kind}) does not generate images")
    name = folder_name(ckpt.path.name, opts, used_ema, chosen, guide)
    folder = Path(folder or ckpt.run_dir / subdir / name)
    manifest = sampling_manifest(str(ckpt.path.resolve()), used_ema, opts, cfg.model.num_classes, chosen)
    manifest.update({"vae": vae or getattr(cfg.codec, "path", ""), "guide": str(guide_run.ckpt.path) if guide_run
                     else ""})  # fmt: skip
    made = generate_sharded(loaded.denoiser, folder, num, opts, manifest, dist, progress=progress,
                            guide=guide_run.denoiser if guide_run else None, classes=chosen)  # fmt: skip
    del loaded, guide_run
    if dist.device.type == "cuda":
        torch.cuda.empty_cache()
    match = CKPT_RE.match(ckpt.path.name)
    provenance = {
        **{k: v for k, v in dataclasses.asdict(opts).items() if k not in ("batch_size", "ema")},
        "checkpoint": str(ckpt.path),
        "train_step": int(match.group(1)) if match else None,
        "ema": used_ema,
        "cfg_interval": list(opts.cfg_interval),
        "labels": describe_labels(cfg.model.num_classes, chosen),
        "guide": manifest["guide"],
        "samples": str(folder),
        **({"swept": note} if note else {}),
    }
    return RunSamples(folder, cfg, opts, provenance, made, chosen)


def class_labels(num: int, num_classes: int, classes: list[int] | None) -> torch.Tensor | None:
    """The labels samples ``0..num-1`` were generated with."""
    from ..flow.generate import balanced_labels

    return balanced_labels(range(num), num_classes, classes)

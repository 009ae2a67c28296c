"""``repflow convert``: checkpoints of the authors' code <-> repflow runs.

``import_checkpoint(kind, file, out)`` writes a run (config, weights, EMA, objective weights, a fresh training
state) that ``repflow sample`` / ``eval`` use as is and ``repflow train RUN/config.yaml --out RUN`` fine-tunes;
``export_checkpoint(kind, run, file)`` writes the official layout back. Files are read with
``torch.load(weights_only=True)``: the ``argparse.Namespace`` the official training scripts store is allowed,
anything else that needs unpickling code is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from ..build import WEIGHTS_KEY, weights_record
from ..config import Config
from ..errors import CheckpointError, ConfigError
from ..runtime.checkpoint import ema_name, first_nonfinite, save_checkpoint
from ..runtime.lookup import load_checkpoint, resolve_checkpoint
from ..runtime.safe_load import load_plain
from . import (
    official_ddt,
    official_jit,
    official_lightningdit,
    official_rae,
    official_rae_decoder,
    official_repa_e,
    official_sit,
)

FORMATS = (
    *official_sit.KINDS,
    official_jit.KIND,
    *official_rae.KINDS,
    *official_lightningdit.KINDS,
    *official_ddt.KINDS,
    *official_repa_e.KINDS,
)
EMA_DECAY = 0.9999  # the official EMA's decay (REPA / REG / SiT); a format module may name its own


def _module(kind: str):
    if kind not in FORMATS:
        raise CheckpointError(f"unknown format {kind!r}; choose from {', '.join(FORMATS)}")
    modules = (official_sit, official_jit, official_rae, official_lightningdit, official_ddt, official_repa_e)
    return next(m for m in modules if kind in m.KINDS)


def read_official(path: str | Path, kind: str = "") -> tuple[dict[float, dict[str, Tensor]], dict | None, int]:
    """({EMA decay: weights}, raw training weights or None, training step) of an official file: a training
    dict (``model``, ``ema`` / ``model_ema1``, ``model_ema2``, ...) or a bare state dict (a release, taken as
    the EMA weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file '{path}' does not exist")
    obj = load_plain(path, "checkpoint file", allowed=(argparse.Namespace,))  # the official scripts store args
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    _refuse_nonfinite(obj, path)
    if kind in official_ddt.KINDS:  # a Lightning checkpoint
        return official_ddt.split_checkpoint(obj)
    decay = getattr(_module(kind), "EMA_DECAY", EMA_DECAY) if kind else EMA_DECAY
    emas = {d: obj[k] for k, d in (("ema", decay), *official_jit.EMAS.items()) if isinstance(obj.get(k), dict)}
    raw = obj.get("model") if isinstance(obj.get("model"), dict) else None
    if emas or raw is not None:
        step = int(obj.get("steps", obj.get("step", obj.get("epoch", 0))) or 0) if kind != official_jit.KIND else 0
        return emas or {decay: raw}, raw, step
    return {decay: obj}, None, 0


def _refuse_nonfinite(obj: dict, path: Path, prefix: str = "") -> None:
    """Every tensor of the file, at any depth (model, EMAs, projectors, optimiser), holds finite values."""
    bad = first_nonfinite({k: v for k, v in obj.items() if isinstance(v, Tensor)})
    if bad:
        raise CheckpointError(f"{path}: tensor {prefix}{bad} holds NaN or infinite values: the file is damaged")
    for key, value in obj.items():
        if isinstance(value, dict):
            _refuse_nonfinite(value, path, f"{prefix}{key}.")


def check_fits(cfg: Config, kind: str, weights: dict[str, Tensor], network: str = "model") -> None:
    """Every imported tensor has the shape the config's network expects (finiteness is checked on reading),
    and none is missing; one line naming the first that does not fit (a file of another size)."""
    from ..build import method_class

    with torch.device("meta"):
        expected = {k: v.shape for k, v in method_class(cfg).inference_networks(cfg)[network].state_dict().items()}
    what = cfg.model.arch if network == "model" else f"{cfg.method.size} decoder"
    for key, value in weights.items():
        if key in expected and tuple(value.shape) != tuple(expected[key]):
            raise CheckpointError(f"{kind} tensor for {key} has shape {tuple(value.shape)}; the inferred {what} "
                                  f"expects {tuple(expected[key])}")  # fmt: skip
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"the {kind} file lacks {missing[0]} (and {len(missing) - 1} more) that the inferred "
                              f"{what} needs: is it a checkpoint of this format?")  # fmt: skip


def _write_run(out: str | Path, step: int, weights: dict, cfg: Config, path: str | Path, kind: str) -> Path:
    """The imported run: its config, the weights and a fresh training state."""
    state = {"step": step, "images_seen": step * cfg.train.batch_size, "optimizer": {}, "rng": {},
             "imported_from": str(Path(path).resolve()), "format": kind}  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(_yaml(cfg))
    return save_checkpoint(out, step, weights, state, cfg, metadata={WEIGHTS_KEY: weights_record(cfg)})


def import_checkpoint(kind: str, path: str | Path, out: str | Path, overrides: list[str] | None = None) -> Path:
    """Write ``out`` as a repflow run holding the official checkpoint ``path``; returns the checkpoint dir."""
    fmt = _module(kind)
    _refuse_used_folder(out)
    if kind in official_repa_e.KINDS:
        return _import_repa_e(path, out, overrides)
    emas, raw, step = read_official(path, kind)
    first = next(iter(emas.values()))
    if kind in official_rae.KINDS and official_rae_decoder.is_decoder(first):
        return _import_decoder(kind, next(iter(emas.values())), raw, step, path, out, overrides)
    cfg = fmt.infer_config(kind, first, overrides)
    weights: dict[str, dict[str, Tensor]] = {}
    extra: dict[str, Tensor] = {}
    for decay, sd in emas.items():
        model, objective, extra_ema = fmt.from_official(kind, sd, cfg)
        check_fits(cfg, kind, model)
        weights[ema_name(decay)] = model
        extra.update({f"{ema_name(decay)}.{k}": v for k, v in extra_ema.items()})  # per weights file
        # the official EMA also averages the REPA projectors; repflow trains the raw ones: keep the averages
        extra.update({f"{ema_name(decay)}.objective.{k}": v for k, v in objective.items()} if raw is not None else {})
    if raw is not None:
        model, objective, extra_raw = fmt.from_official(kind, raw, cfg)
        check_fits(cfg, kind, model)
        extra.update({f"model.{k}": v for k, v in extra_raw.items()})
    extra = {k: v.clone() for k, v in extra.items()}  # tensors the raw and EMA dicts share are stored once each
    weights.update({"model": model, "objective": objective, "official": extra})
    cfg = cfg.replace(**{"train.ema_decays": tuple(emas)})
    return _write_run(out, step, weights, cfg, path, kind)


def _refuse_used_folder(out: str | Path) -> None:
    """An import writes a new run: into a folder that holds one, its step-0 checkpoint would sit beside the
    old ones, and ``sample`` would take the newest, old, weights."""
    out = Path(out)
    if out.is_file():
        raise ConfigError(f"--out '{out}' is a file, not a directory")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        more = " ..." if len(held) > 3 else ""
        raise ConfigError(f"--out '{out}' is not empty (it holds {', '.join(held[:3])}{more}): convert writes a "
                          "new run; choose a new or empty folder")  # fmt: skip


def _import_repa_e(path, out, overrides) -> Path:
    """A REPA-E training checkpoint as a ``repa_e`` run, its VAE also as ``RUN/vae`` (the run's codec)."""
    fmt = official_repa_e
    obj = load_plain(Path(path), "checkpoint file", allowed=(argparse.Namespace,))
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a REPA-E training checkpoint")
    fmt.check_file(obj, path)
    _refuse_nonfinite(obj, Path(path))
    out = Path(out)
    cfg = fmt.infer_config(obj, out.resolve(), overrides)
    weights = fmt.from_official(obj, cfg)
    fmt.write_codec(weights, fmt.ldm_config(obj["vae"]), cfg.method.bn_eps, out / "vae")  # first: the codec
    check_fits(cfg, fmt.KINDS[0], weights["model"])  # the VAE's names and shapes: from_ldm and write_codec
    return _write_run(out, int(obj.get("steps", 0) or 0), weights, cfg, path, fmt.KINDS[0])


def _import_decoder(kind: str, ema: dict, raw: dict | None, step: int, path, out, overrides) -> Path:
    """A stage-1 decoder of RAE / RAEv2 as a ``rae_decoder`` run (the decoder and its EMA; no discriminator)."""
    dec = official_rae_decoder
    cfg = dec.infer_config(kind, ema, overrides)
    weights = {"decoder": dec.from_official(raw if raw is not None else ema),
               f"decoder-{ema_name(dec.EMA_DECAY)}": dec.from_official(ema)}  # fmt: skip
    for tensors in weights.values():
        check_fits(cfg, kind, tensors, network="decoder")
    return _write_run(out, step, weights, cfg, path, kind)


def export_checkpoint(kind: str, run: str | Path, path: str | Path) -> Path:
    """Write a run's newest checkpoint (or a checkpoint) in the official layout: REG ``{"model", "ema"}``,
    REPA and SiT a bare (EMA) state dict, JiT ``{"model", "model_ema1", "model_ema2"}``, as their sampling
    scripts load them."""
    fmt = _module(kind)
    ckpt = load_checkpoint(resolve_checkpoint(run))
    cfg: Config = ckpt.config
    if cfg.method.kind == "rae_decoder":  # stage 1: the EMA decoder, flat, as their extract_decoder.py writes it
        if kind not in official_rae.KINDS:
            raise CheckpointError(f"{ckpt.path} is an RAE decoder run: export it as official-rae or official-raev2")
        names = ckpt.weight_names()
        file = next((f"decoder-{ema_name(d)}" for d in cfg.train.ema_decays if f"decoder-{ema_name(d)}" in names),
                    "decoder")  # fmt: skip
        return _save(official_rae_decoder.to_official(ckpt.weights(file)), path)
    names = ckpt.weight_names()
    if (cfg.method.kind == "repa_e") != (kind in official_repa_e.KINDS):
        raise CheckpointError(f"{ckpt.path} is a {cfg.method.kind} run: export it as "
                              f"{'official-repa-e' if cfg.method.kind == 'repa_e' else 'another format'}")  # fmt: skip
    if kind in official_repa_e.KINDS:
        return _save(official_repa_e.to_official(ckpt.weights, names, cfg, int(ckpt.state()["step"])), path)
    extra = ckpt.weights("official") if "official" in names else {}
    objective = ckpt.weights("objective") if "objective" in names else {}
    decays = [d for d in cfg.train.ema_decays if ema_name(d) in names]

    def official(file: str) -> dict[str, Tensor]:
        """One weights file in the official layout, with the official-only tensors imported with it (none for
        a run trained in repflow: they are recomputed)."""
        own = {k[len(file) + 1 :]: v for k, v in extra.items() if k.startswith(f"{file}.")}
        mine = {k[len("objective.") :]: v for k, v in own.items() if k.startswith("objective.")}
        own = {k: v for k, v in own.items() if not k.startswith("objective.")}
        return fmt.to_official(kind, ckpt.weights(file), mine or objective, own, cfg)

    emas = [official(ema_name(d)) for d in decays] or [official("model")]
    if kind == official_jit.KIND:
        obj = {"model": official("model"), "model_ema1": emas[0], "model_ema2": emas[min(1, len(emas) - 1)]}
    elif kind in official_ddt.KINDS:
        obj = official_ddt.lightning_checkpoint(emas[0], official("model"), ckpt.state()["step"])
    elif kind in ("official-reg", *official_rae.KINDS, *official_lightningdit.KINDS):  # their samplers read "ema"
        obj = {"model": official("model"), "ema": emas[0]}
    else:
        obj = emas[0]
    return _save(obj, path)


def _save(obj: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def _yaml(cfg: Config) -> str:
    from ..config import to_yaml

    return to_yaml(cfg)


__all__ = ["FORMATS", "export_checkpoint", "import_checkpoint", "read_official"]

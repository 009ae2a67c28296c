"""Checkpoints: written atomically, loaded without unpickling code.

A checkpoint is a directory ``<run>/checkpoints/ckpt-<step>/`` holding

- ``<network>.safetensors``: the raw weights of each of the method's networks (``model``: the sampled one;
  ``objective``: training-only modules such as REPA's projectors, absent when there are none);
- ``ema-<decay>.safetensors``: the model's EMA copies (``<network>-ema-<decay>`` for other networks);
- ``state.pt``: optimiser states (one per phase), RNG states, step and data position in images (plain
  tensors and numbers, loaded with ``weights_only=True``);
- ``config.yaml``: the resolved config, so ``sample`` and ``eval`` rebuild the model from the checkpoint alone.

It is written into a hidden temporary directory, flushed to disk, then renamed into place: a process killed
while writing leaves the previous checkpoint untouched and loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..config import Config, to_yaml
from ..errors import CheckpointError
from .safe_load import load_plain, read_json

CKPT_RE = re.compile(r"^ckpt-(\d+)$")


def ema_name(decay: float) -> str:
    return f"ema-{decay:g}"


def ema_file(network: str, decay: float) -> str:
    """The weights file of a network's EMA copy: ``ema-0.9999`` for the sampled "model" (as repflow always
    wrote it), ``<network>-ema-<decay>`` for any other network."""
    return ema_name(decay) if network == "model" else f"{network}-{ema_name(decay)}"


def select_weights(
    decays: list[float] | tuple[float, ...], network: str, ema: float, available: list[str], required: bool = True
) -> tuple[str, float | str]:
    """(weights file, decay or "raw") to load for ``network``: ``ema`` -1 the first of the run's EMA ``decays``
    (the raw weights when it kept none), 0 the raw weights, else that decay. A network that is not
    ``required`` to have EMA copies falls back to its raw weights under the default, and under any decay when
    it kept no EMA copy at all."""
    if ema == 0 or (ema < 0 and not decays):
        return network, "raw"
    decay = decays[0] if ema < 0 else ema
    name = ema_file(network, decay)
    if name not in available:
        kept_none = not any(ema_file(network, d) in available for d in decays)
        if not required and (ema < 0 or kept_none):  # a network trained without EMA copies (REPA-E's VAE)
            return network, "raw"
        have = ", ".join(available) or "none"
        raise CheckpointError(f"the checkpoint has no EMA {decay:g} weights for {network} (it has: {have})")
    return name, decay


def first_nonfinite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or inf, or None."""
    return next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives (any process can name it)."""
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights: dict[str, dict[str, Tensor]],
    state: dict,
    cfg: Config,
    keep: int = 0,
    metadata: dict[str, str] | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """Write ``weights`` (name -> tensors) and ``state`` atomically; keep the newest ``keep`` (0: all).
    ``metadata`` goes into every weights file (what the weights were trained as, checked when loading).

    A write that fails (disk full, read-only) removes its temporary directory and raises one line naming the
    last good checkpoint, which is untouched."""
    final = checkpoint_dir(run_dir, step)
    ckpt_root = final.parent
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for name, tensors in weights.items():
            if tensors:
                save_file(
                    {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                    str(tmp / f"{name}.safetensors"),
                    metadata=metadata,
                )
        torch.save(state, tmp / "state.pt")
        (tmp / "config.yaml").write_text(to_yaml(cfg))
        if class_names:
            (tmp / "classes.json").write_text(json.dumps(list(class_names)) + "\n")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
    except (OSError, SafetensorError, RuntimeError) as err:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays on a full disk
        previous = list_checkpoints(run_dir)
        last = previous[-1] if previous else "none yet"
        reason = getattr(err, "strerror", None) or next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise CheckpointError(
            f"could not write the step-{step} checkpoint in {ckpt_root} ({reason}); the last good checkpoint is "
            f"{last}. Free space (or make the folder writable) and rerun the same command to resume from it"
        ) from err
    if final.exists():  # re-saving the same step: move the old one aside first
        old = ckpt_root / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        shutil.rmtree(old)
    tmp.rename(final)
    _fsync(ckpt_root)
    if keep > 0:
        for stale in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def clean_stale_temporaries(run_dir: Path) -> None:
    """Remove temporaries of interrupted writes. Only the holder of the run directory's lock may call this."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in root.glob(".old-*"):
            shutil.rmtree(p, ignore_errors=True)


@dataclass
class Checkpoint:
    path: Path
    config: Config

    @property
    def run_dir(self) -> Path:
        """The run it belongs to: where its samples, evaluations and sweeps go by default."""
        return self.path.parent.parent

    def class_names(self) -> list[str]:
        """The training data's class names (``classes.json``), or [] when the run did not record them."""
        f = self.path / "classes.json"
        if not f.exists():
            return []
        names = read_json(f)
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{f} is damaged (not a list of class names); restore it, or delete it to sample "
                                  "by class index")  # fmt: skip
        return names

    def weight_names(self) -> list[str]:
        return sorted(p.name[: -len(".safetensors")] for p in self.path.glob("*.safetensors"))

    def weights(self, name: str) -> dict[str, Tensor]:
        f = self.path / f"{name}.safetensors"
        if not f.is_file():
            have = ", ".join(self.weight_names()) or "none"
            raise CheckpointError(f"checkpoint {self.path} has no '{name}' weights (it has: {have})")
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{f} is corrupt or truncated ({err}); use an earlier checkpoint") from err
        bad = first_nonfinite(tensors)
        if bad:  # all-black samples, or a resumed run that diverges at once, otherwise
            raise CheckpointError(f"{f}: tensor {bad} holds NaN or infinite values; use an earlier checkpoint")
        return tensors

    def metadata(self, name: str) -> dict[str, str]:
        """The metadata stored in a weights file (what the weights were trained as); {} for older files."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.path / f"{name}.safetensors"), "pt") as f:
                return dict(f.metadata() or {})
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{self.path}/{name}.safetensors is corrupt or truncated ({err})") from err

    def state(self) -> dict:
        f = self.path / "state.pt"
        if not f.is_file():
            raise CheckpointError(f"checkpoint {self.path} has no state.pt: it holds weights only, not resumable")
        return load_plain(f, "training state")

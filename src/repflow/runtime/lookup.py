"""What a path given by a user names: a checkpoint, a run (its newest checkpoint), an exported folder or a Hub id
(its cached snapshot). Apart from ``checkpoint`` and ``exported`` because it knows both formats (each of which
knows only its own), so neither imports the other back."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, from_yaml
from ..errors import CheckpointError
from .checkpoint import Checkpoint, list_checkpoints
from .exported import WEIGHTS, is_exported, load_exported, locate


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the newest checkpoint of a run directory; an exported folder's
    ``transformer/`` (a Hub id: its cached snapshot's)."""
    path = locate(path)
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist; pass a run directory, a checkpoint directory, an exported "
                              "folder or a Hub id (org/name)")  # fmt: skip
    if is_exported(path):
        return path / "transformer"
    if (path / "state.pt").is_file() or (path / "model.safetensors").is_file():
        return path
    if (path / WEIGHTS).is_file() and is_exported(path.parent):
        return path
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise CheckpointError(f"'{path}' holds no checkpoint (expected {path}/checkpoints/ckpt-<step>/)")
    return ckpts[-1]


def load_checkpoint(path: str | Path) -> Checkpoint:
    ckpt = resolve_checkpoint(path)
    if is_exported(ckpt.parent) and ckpt.name == "transformer":
        return load_exported(ckpt.parent)
    cfg_file = ckpt / "config.yaml"
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no config.yaml; it was not written by repflow")
    try:
        cfg = from_yaml(cfg_file.read_text())
    except (ConfigError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{cfg_file} is not a valid repflow config: {str(err).splitlines()[0]}") from err
    return Checkpoint(ckpt, cfg)

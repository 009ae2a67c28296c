"""Exported (Hub-style) folders and Hub ids, as checkpoints every command reads.

``repflow export RUN --to diffusers DIR`` writes a diffusers pipeline folder (``model_index.json``,
``transformer/``, ``vae/``, ``README.md``). Its ``transformer/config.json`` holds the run's resolved repflow
config and which weights were exported, and ``transformer/diffusion_pytorch_model.safetensors`` holds every
inference network's tensors under ``networks.<network>.``: :class:`ExportedCheckpoint` serves those as the
weight files of an ordinary checkpoint, so sampling, evaluation and sweeps need no second loading path.

A Hub id ``org/name[@revision]`` that is not a local path resolves through huggingface_hub's cache (a
download when the hub is reachable; offline, the cached snapshot or one line saying what to download).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..config import Config, ConfigError, from_yaml, replace
from ..errors import CheckpointError
from .checkpoint import Checkpoint, ema_file

WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' name for a model's weights
PREFIX = "networks."  # RepflowTransformer keeps the method's inference networks in an nn.ModuleDict
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``repflow export --to diffusers``."""
    path = Path(path)
    return (path / "model_index.json").is_file() and (path / "transformer" / "config.json").is_file()


def split_hub_id(spec: str) -> tuple[str, str | None]:
    """``org/name[@revision]`` -> (repo id, revision or None); anything else is one ValueError line."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo, _, revision = spec.partition("@")
    try:
        validate_repo_id(repo)
        if not _HUB_ID.match(spec) or repo.count("/") != 1:
            raise HFValidationError("")
    except HFValidationError:
        raise ValueError(f"'{spec}' is not a Hub id: write org/name[@revision] with letters, digits, '-', '_' "
                         "and '.' (or give an existing local path)") from None  # fmt: skip
    return repo, revision or None


def looks_like_hub_spec(spec: str) -> bool:
    """A string meant as a Hub id rather than a path: ``org/name`` (+ ``@revision``), no leading ``/ . ~``."""
    return spec.split("@", 1)[0].count("/") == 1 and not spec.startswith(("/", ".", "~"))


def locate(spec: str | Path) -> Path:
    """A local path as it is; a Hub id that is not one as its snapshot in the Hugging Face cache."""
    path = Path(spec)
    if path.exists() or not looks_like_hub_spec(str(spec)):
        return path
    repo, revision = split_hub_id(str(spec))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or None  # read now, not when huggingface_hub was imported
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache))
    except LocalEntryNotFoundError as err:  # offline (HF_HUB_OFFLINE=1 or no network) and not cached
        where = cache or "the Hugging Face cache (HF_HUB_CACHE)"
        raise CheckpointError(f"'{spec}' is neither a local path nor cached in {where}, and the hub cannot be "
                              f"reached: run `hf download {repo}" + (f" --revision {revision}" if revision else "")
                              + "` on a connected machine (same HF_HUB_CACHE), or copy the folder here and "
                              "pass its path") from err  # fmt: skip
    except (OSError, ValueError) as err:  # no such repository or revision, no access
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot fetch '{spec}' from the Hugging Face hub: {first}") from err


class ExportedCheckpoint(Checkpoint):
    """The ``transformer/`` folder of an export, read as a weights-only checkpoint."""

    def __init__(self, path: Path, config: Config, record: dict):
        super().__init__(path, config)
        self.record = record  # transformer/config.json

    @property
    def export_dir(self) -> Path:
        return self.path.parent

    @property
    def run_dir(self) -> Path:
        """Where samples, evaluations and sweeps of it go: inside a local export, under ``runs/`` for a cached
        Hub snapshot (``.../models--org--name/snapshots/<rev>``), which is no place to write."""
        snap = self.export_dir
        if snap.parent.name == "snapshots" and snap.parent.parent.name.startswith("models--"):
            return Path("runs") / snap.parent.parent.name.removeprefix("models--")
        return snap

    def _file_of(self) -> dict[str, str]:
        ema = self.record.get("ema", "raw")
        return {(n if ema == "raw" else ema_file(n, float(ema))): n for n in self.record["network_names"]}

    def weight_names(self) -> list[str]:
        return sorted(self._file_of())

    def weights(self, name: str) -> dict[str, Tensor]:
        files = self._file_of()
        if name not in files:
            have = ", ".join(sorted(files))
            raise CheckpointError(f"the export {self.export_dir} holds only {have} (chosen at export with --ema)")
        prefix = f"{PREFIX}{files[name]}."
        try:
            with safe_open(str(self.path / WEIGHTS), "pt") as f:
                return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{self.path / WEIGHTS} is missing, corrupt or truncated ({err})") from err

    def metadata(self, name: str) -> dict[str, str]:
        return {}

    def state(self) -> dict:
        raise CheckpointError(f"{self.export_dir} is an export (weights only): it cannot resume training")

    def class_names(self) -> list[str]:
        return [str(n) for n in self.record.get("class_names") or []]


def load_exported(export_dir: Path) -> ExportedCheckpoint:
    """The checkpoint view of an export; the codec's files are those inside it."""
    cfg_file = export_dir / "transformer" / "config.json"
    try:
        record = json.loads(cfg_file.read_text())
        cfg = from_yaml(json.dumps(record["repflow_config"]))  # JSON is YAML: one parser, with its upgrades
    except (ValueError, KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{cfg_file} is not a repflow export's config ({str(err).splitlines()[0]})") from err
    return ExportedCheckpoint(export_dir / "transformer", with_codec_files(cfg, export_dir), record)


def with_codec_files(cfg: Config, export_dir: Path) -> Config:
    """The config with the codec's weights read from the export (``vae/``, ``codec/``), wherever it lies."""
    codec = cfg.codec
    stats = [p for p in (export_dir / "codec").glob("stats.*")] if (export_dir / "codec").is_dir() else []
    if codec.kind == "sd_vae":
        codec = replace(codec, path=str(export_dir / "vae"))
    elif codec.kind == "vae":
        codec = replace(codec, path=str(export_dir / "vae"), stats=str(stats[0]) if stats else "")
    elif codec.kind == "rae":
        codec = replace(codec, decoder=str(export_dir / "vae"), stats=str(stats[0]) if stats else "")
    return cfg.replace(codec=codec)

"""The ``vae`` codec: any diffusers autoencoder in a local directory (or a hub id in the local cache).

The class is read from the directory's ``config.json`` (``_class_name``; see :mod:`.autoencoders` for the ones
driven and how), and with it the latent width and the downsampling factor. The model sees
``(z - shift) * scale`` per channel, ``z`` in the VAE's units, with ``shift`` and ``scale`` as the class's
diffusers pipeline takes them from the config (``scaling_factor`` / ``shift_factor``, ``latents_mean`` /
``latents_std``, FLUX.2's batch norm); ``codec.scale`` / ``codec.shift`` override them, and ``codec.stats``
(``repflow codec stats``) replaces them with per-channel dataset statistics, the way to train in a VAE whose
config has none. The config is read eagerly (cheap: it gives the latent shape), the weights on first use.
The VAE runs in chunks, in bf16 autocast on GPU and fp32 on CPU. ``sd_vae`` (:mod:`.sd_vae`) is this codec
with SD's defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..config import CodecConfig, checked, positive
from ..errors import ConfigError
from ..registry import CODECS
from ..runtime.fingerprint import json_sha256, weights_sha256
from ..runtime.precision import autocast_for
from .autoencoders import Normalisation, autoencoder_class, refuse


def _auto_or_positive(v) -> str | None:
    return None if v == "auto" or (not isinstance(v, str) and v > 0) else "must be auto or > 0"


@dataclass(frozen=True)
class VAECodecConfig(CodecConfig):
    kind: str = "vae"
    path: str = ""  # a diffusers autoencoder directory (save_pretrained layout, or a pipeline's with vae/)
    scale: float | Literal["auto"] = checked("auto", _auto_or_positive)  # auto: the VAE config's (see above)
    shift: float | Literal["auto"] = "auto"
    stats: str = ""  # per-channel latent mean / var (`repflow codec stats`): z_model = (z - mean) / sqrt(var)
    cache: str = ""  # directory of cached latents (repflow cache latents); "" encodes on the fly
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # the VAE's: auto is bf16 autocast on GPU, fp32 on CPU
    chunk: int = checked(32, positive)  # images per VAE call (memory)

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("config key 'codec.path' must name a diffusers autoencoder directory for codec.kind=vae")
        if self.stats and (self.scale != "auto" or self.shift != "auto"):
            raise ConfigError("codec.stats normalises the latents per channel: leave codec.scale and codec.shift "
                              "at auto")  # fmt: skip


PACKAGED = Path(__file__).resolve().parent.parent / "presets"  # codec.path: autoencoders/<name>
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# not part of what a latent cache stores: the decoder side, and the normalisation applied after the cache
_DECODER_SIDE = ("decoder.", "post_quant_conv.", "bn.")
_NORMALISATION_KEYS = ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast", "sample_size")


@contextlib.contextmanager
def _quiet_hub():
    with warnings.catch_warnings():  # diffusers passes huggingface_hub a deprecated argument on every load
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
        yield


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def locate_vae(path: str) -> tuple[str, str | None, dict]:
    """(source for from_pretrained, subfolder, config dict) for a local directory or a hub id."""
    local = Path(path).expanduser()
    packaged = PACKAGED / path  # an architecture shipped with repflow (config.json only: REPA-E from scratch)
    if not local.exists() and (packaged / "config.json").is_file():
        local = packaged
    if local.exists() or not _HUB_ID.match(path) or path.startswith((".", "~")):
        if not local.is_dir():
            raise FileNotFoundError(f"VAE directory '{path}' does not exist (codec.path: a directory or a hub id)")
        for sub in (None, "vae"):
            cfg_file = local / sub / "config.json" if sub else local / "config.json"
            if cfg_file.is_file():
                return str(local), sub, json.loads(cfg_file.read_text())
        raise FileNotFoundError(
            f"'{path}' holds no config.json (nor vae/config.json): not a diffusers autoencoder directory"
        )
    from .._compat import require

    diffusers = require("diffusers")
    errors = []
    for sub in (None, "vae"):
        try:
            with _quiet_hub():
                return path, sub, dict(diffusers.AutoencoderKL.load_config(path, subfolder=sub))
        except (OSError, ValueError) as err:  # hub miss, offline, no such file
            errors.append(_first_line(err))
    raise FileNotFoundError(
        f"cannot load VAE '{path}' from the Hugging Face hub or its cache ({errors[0]}); offline machines need "
        f"the files copied into ~/.cache/huggingface (`hf download {path}` elsewhere) or codec.path=/local/dir"
    )


def _like(v: float | Tensor, z: Tensor) -> float | Tensor:
    return v if isinstance(v, float) else v.to(z.device, z.dtype)


class VAECodec:
    name = "vae"
    cacheable = True
    can_decode = True
    legacy_identity = False  # sd_vae: the identity repflow <= 0.4 wrote, so its latent caches stay valid

    def __init__(
        self,
        path: str,
        scale: float | None = None,
        shift: float | None = None,
        stats: str = "",
        device: torch.device | str = "cpu",
        precision: str = "auto",
        chunk: int = 32,
        vae=None,
        normalisation: Normalisation | None = None,
    ):
        """``scale`` / ``shift`` None: the VAE config's; ``stats``: a per-channel statistics file instead.
        ``vae``: an autoencoder already loaded (a diffusers pipeline's, a REPA-E run's), used instead of reading
        ``path``; ``normalisation``: its (shift, scale) given (a REPA-E run's batch-norm statistics)."""
        self.path, self.chunk, self.precision = path, int(chunk), precision
        self.source, self.subfolder, self.config = (
            (path, None, dict(vae.config)) if vae is not None else locate_vae(path)
        )
        self.autoencoder = autoencoder_class(self.config, path)
        self.stochastic = self.autoencoder.stochastic
        self.latent_channels = self.autoencoder.latent_channels(self.config)
        self.in_channels = self.autoencoder.image_channels(self.config)
        self.factor = self.autoencoder.factor(self.config)
        self.device = torch.device(device)
        self._vae = vae.eval().requires_grad_(False).to(self.device) if vae is not None else None
        self._overrides, self.stats = (shift, scale), stats
        self._normalisation: Normalisation | None = normalisation
        self._stats_codec: dict = {}  # the identity of the VAE a `repflow codec stats` file was computed with
        if normalisation is None and stats:
            self._normalisation = self._stats_normalisation(stats)
        elif normalisation is None and self.autoencoder.name != "AutoencoderKLFlux2":  # FLUX.2's: in its weights
            self._normalisation = self._config_normalisation()

    # -- normalisation ----------------------------------------------------------------------------------------
    def _stats_normalisation(self, path: str) -> Normalisation:
        from ..data.latent_stats import load_stats

        mean, var, meta = load_stats(path)
        self._stats_codec = meta.get("codec") or {}
        if tuple(mean.shape) != (self.latent_channels, 1, 1):
            raise ConfigError(f"codec.stats '{path}' holds {tuple(mean.shape)} statistics but the VAE's latent has "
                              f"{self.latent_channels} channels; recompute them: `repflow codec stats`")  # fmt: skip
        if not (var > 0).all():
            raise ConfigError(f"codec.stats '{path}' has a channel of zero variance: it cannot be normalised")
        return mean.double(), 1.0 / var.double().sqrt()

    def _config_normalisation(self) -> Normalisation:
        shift, scale = self._overrides
        found = self.autoencoder.normalisation_of(self.config, lambda: self.vae)
        if scale is None and found is None:
            raise ConfigError(f"the {self.autoencoder.name} in '{self.path}' has no latent scaling in its config: "
                              f"compute per-channel statistics with `repflow codec stats CONFIG --out stats."
                              f"safetensors` and set codec.stats, or set codec.scale")  # fmt: skip
        base_shift, base_scale = found or (0.0, 0.0)
        return (base_shift if shift is None else float(shift)), (base_scale if scale is None else float(scale))

    @property
    def normalisation(self) -> Normalisation:
        """(shift, scale): ``z_model = (z - shift) * scale``, floats or per-channel (C, 1, 1) float64 tensors."""
        if self._normalisation is None:
            self._normalisation = self._config_normalisation()
        return self._normalisation

    def normalise(self, z: Tensor) -> Tensor:
        """VAE units -> model space, in float32 (float64 stays float64)."""
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        shift, scale = self.normalisation
        return (z - _like(shift, z)) * _like(scale, z)

    def denormalise(self, z: Tensor) -> Tensor:
        """Model space -> VAE units, as the pipelines decode: ``z / scale + shift``."""
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        shift, scale = self.normalisation
        return z / _like(scale, z) + _like(shift, z)

    # -- the network, loaded on first use -------------------------------------------------------------------
    @property
    def vae(self):
        if self._vae is None:
            self._vae = self.load(pretrained=True).eval().requires_grad_(False).to(self.device)
            self._check_stats_identity()
        return self._vae

    def load(self, pretrained: bool = True):
        """A new instance of the autoencoder on the CPU, trainable (REPA-E tunes one): its weights, or with
        ``pretrained`` False its architecture freshly initialised (from torch's current seed; a directory
        holding only a ``config.json`` is enough)."""
        from .._compat import require

        cls = getattr(require("diffusers"), self.autoencoder.name, None)
        if cls is None:  # an older diffusers than the class needs
            refuse(self.autoencoder.name, self.path)
        if not pretrained:
            return cls.from_config(self.config)
        try:
            with _quiet_hub():
                return cls.from_pretrained(self.source, subfolder=self.subfolder, torch_dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"cannot load the VAE weights of '{self.path}': {_first_line(err)}") from err

    def _check_stats_identity(self) -> None:
        """Statistics of another VAE's latents would normalise these wrongly without a sign: refuse them (files
        made elsewhere, LightningDiT's or REPA-E's, carry no identity and are taken as given)."""
        if not self._stats_codec:
            return
        mine = self.identity()
        differ = sorted(k for k in set(mine) | set(self._stats_codec) if mine.get(k) != self._stats_codec.get(k))
        if differ:
            raise ConfigError(f"codec.stats '{self.stats}' was computed with another VAE than '{self.path}' (its "
                              f"{', '.join(differ)} differ); recompute them: `repflow codec stats`")  # fmt: skip

    def to(self, device: torch.device | str) -> VAECodec:
        self.device = torch.device(device)
        if self._vae is not None:
            self._vae.to(self.device)
        return self

    def _autocast(self):
        return autocast_for(self.device, self.precision)

    # -- the codec protocol ---------------------------------------------------------------------------------
    def model_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        if channels != self.in_channels:
            raise ValueError(f"the VAE '{self.path}' takes {self.in_channels}-channel images; set data.channels=3")
        if resolution % self.factor:
            raise ValueError(
                f"data.resolution={resolution} is not a multiple of the VAE's downsampling factor {self.factor}"
            )
        return self.latent_channels, resolution // self.factor, resolution // self.factor

    @torch.no_grad()
    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and std (float32, VAE units) of images in [-1, 1], in chunks (a deterministic
        autoencoder: its latent and a zero std of shape (B, 1, 1, 1))."""
        means, stds = [], []
        for chunk in images.to(self.device).split(self.chunk):
            with self._autocast():
                mean, std = self.autoencoder.moments(self.vae, chunk.float())
                means.append(mean.float())
                stds.append(std.float())
        return torch.cat(means), torch.cat(stds)

    def encode(self, images: Tensor) -> Tensor:
        mean, _ = self.moments(images)
        return self.normalise(mean)

    def sample(self, mean: Tensor, std: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        return self.normalise(mean if std is None or eps is None else mean + std * eps)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        out = []
        for chunk in z.to(self.device).split(self.chunk):
            with self._autocast():
                out.append(self.autoencoder.decode(self.vae, self.denormalise(chunk.float())).float().clamp(-1, 1))
        return torch.cat(out)

    # -- latent statistics (`repflow codec stats`) ------------------------------------------------------------
    def stats_rows(self, images: Tensor) -> Tensor:
        """(B h w, 2, C): per latent position, the posterior mean and variance of every channel. Their moments
        over a dataset give the per-channel mean and variance of a posterior draw ``z = mean + std * eps``:
        ``E[z] = E[mean]``, ``Var[z] = Var[mean] + E[std^2]`` (exact; a deterministic latent has std 0)."""
        mean, std = self.moments(images)
        rows = torch.stack([mean, (std**2).expand_as(mean)], dim=1)  # (B, 2, C, h, w)
        return rows.permute(0, 3, 4, 1, 2).reshape(-1, 2, mean.shape[1]).double()

    def stats_of(self, moments) -> tuple[Tensor, Tensor]:
        """(mean, var) per channel, (C, 1, 1), of :meth:`stats_rows`' moments."""
        return moments.mean[0].view(-1, 1, 1), (moments.var[0] + moments.mean[1]).view(-1, 1, 1)

    def identity(self) -> dict[str, Any]:
        """What a latent cache must match: the latent layout and a hash of the encoding side's weights (the
        decoder and the path do not change the latents: sd-vae-ft-ema and -mse share their encoder), and of
        the class and config. Not the normalisation: caches store VAE units."""
        ident: dict[str, Any] = {
            "kind": self.name,
            "latent_channels": self.latent_channels,
            "factor": self.factor,
            "encoder_sha256": weights_sha256(self.vae.state_dict(), lambda k: not k.startswith(_DECODER_SIDE)),
        }
        if not self.legacy_identity:
            config = {k: v for k, v in self.vae.config.items() if not k.startswith("_")}
            ident["class"] = self.autoencoder.name
            ident["config_sha256"] = json_sha256({k: v for k, v in config.items() if k not in _NORMALISATION_KEYS})
        return ident

    def __repr__(self) -> str:
        where = os.path.join(self.source, self.subfolder) if self.subfolder else self.source
        return f"{type(self).__name__}({where!r}, {self.autoencoder.name}, factor={self.factor})"


def auto(v) -> float | None:
    return None if v == "auto" else float(v)


@CODECS.register("vae", VAECodecConfig)
def build_vae(cfg: VAECodecConfig, device: torch.device | str = "cpu", path: str = "") -> VAECodec:
    return VAECodec(path or cfg.path, auto(cfg.scale), auto(cfg.shift), cfg.stats, device=device,
                    precision=cfg.precision, chunk=cfg.chunk)  # fmt: skip


__all__ = ["VAECodec", "VAECodecConfig", "locate_vae"]

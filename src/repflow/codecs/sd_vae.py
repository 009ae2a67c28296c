"""The SD-VAE codec: a diffusers ``AutoencoderKL`` (``stabilityai/sd-vae-ft-ema`` / ``-mse`` or any local one).

256 px images become 32x32x4 latents (the downsampling factor is read from the VAE's config). The model sees
``(z - shift) * scale`` with SD's ``scale = 0.18215, shift = 0``; other VAEs set both in ``codec.*``.
A hub id and a local directory (``save_pretrained`` layout, or a pipeline directory with a ``vae/`` subfolder)
load through the same ``from_pretrained`` call. The config is read eagerly (cheap: it gives the latent shape);
the weights only on first use. The VAE runs in chunks, in bf16 autocast on GPU and fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from ..registry import CODECS
from ..runtime.precision import autocast_for

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"


@dataclass(frozen=True)
class SDVAECodecConfig(CodecConfig):
    kind: str = "sd_vae"
    path: str = DEFAULT_VAE  # local directory or hub id (any diffusers AutoencoderKL)
    scale: float = checked(0.18215, positive)  # z_model = (z_vae - shift) * scale
    shift: float = 0.0
    cache: str = ""  # directory of cached latents (repflow cache latents); "" encodes on the fly
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # the VAE's: auto is bf16 autocast on GPU, fp32 on CPU
    chunk: int = checked(32, positive)  # images per VAE call (memory)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        return {**data, "path": data.get("path") or DEFAULT_VAE}  # repflow <= 0.1 wrote "" for the default


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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
    if local.exists() or not _HUB_ID.match(path) or path.startswith((".", "~")):
        if not local.is_dir():
            raise FileNotFoundError(f"VAE directory '{path}' does not exist (codec.path: a directory or a hub id)")
        for sub in (None, "vae"):
            cfg_file = local / sub / "config.json" if sub else local / "config.json"
            if cfg_file.is_file():
                return str(local), sub, json.loads(cfg_file.read_text())
        raise FileNotFoundError(
            f"'{path}' holds no config.json (nor vae/config.json): not a diffusers AutoencoderKL directory"
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


class SDVAECodec:
    name = "sd_vae"
    stochastic = True
    cacheable = True
    can_decode = True

    def __init__(
        self,
        path: str,
        scale: float = 0.18215,
        shift: float = 0.0,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        chunk: int = 32,
        vae=None,
    ):
        """``vae``: an AutoencoderKL already loaded (a diffusers pipeline's), used instead of reading ``path``."""
        self.path, self.scale, self.shift, self.chunk = path, float(scale), float(shift), int(chunk)
        self.source, self.subfolder, self.config = (
            (path, None, dict(vae.config)) if vae is not None else locate_vae(path)
        )
        if self.config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise ValueError(f"'{path}' is a {self.config['_class_name']}, not an AutoencoderKL")
        self.latent_channels = int(self.config.get("latent_channels", 4))
        self.in_channels = int(self.config.get("in_channels", 3))
        self.factor = 2 ** (len(self.config.get("block_out_channels", (64,))) - 1)  # one downsample per block but last
        self.device = torch.device(device)
        self.precision = precision
        self._vae = vae.eval().requires_grad_(False).to(self.device) if vae is not None else None

    # -- the network, loaded on first use -------------------------------------------------------------------
    @property
    def vae(self):
        if self._vae is None:
            from .._compat import require

            diffusers = require("diffusers")
            try:
                with _quiet_hub():
                    vae = diffusers.AutoencoderKL.from_pretrained(
                        self.source, subfolder=self.subfolder, torch_dtype=torch.float32
                    )
            except (OSError, ValueError) as err:
                raise FileNotFoundError(f"cannot load the VAE weights of '{self.path}': {_first_line(err)}") from err
            self._vae = vae.eval().requires_grad_(False).to(self.device)
        return self._vae

    def to(self, device: torch.device | str) -> SDVAECodec:
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
        """Posterior mean and std (float32, VAE units) of images in [-1, 1], in chunks."""
        means, stds = [], []
        for chunk in images.to(self.device).split(self.chunk):
            with self._autocast():
                posterior = self.vae.encode(chunk.float()).latent_dist
                means.append(posterior.mean.float())
                stds.append(posterior.std.float())
        return torch.cat(means), torch.cat(stds)

    def encode(self, images: Tensor) -> Tensor:
        mean, _ = self.moments(images)
        return (mean - self.shift) * self.scale

    def sample(self, mean: Tensor, std: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        z = mean.float() if std is None or eps is None else mean.float() + std.float() * eps.float()
        return (z - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        out = []
        for chunk in z.to(self.device).split(self.chunk):
            with self._autocast():
                out.append(self.vae.decode(chunk.float() / self.scale + self.shift).sample.float().clamp(-1, 1))
        return torch.cat(out)

    def identity(self) -> dict[str, Any]:
        """Kind, latent layout and a hash of the encoder weights: the decoder and the path do not change the
        latents (sd-vae-ft-ema and -mse share their encoder), a different encoder does."""
        h = hashlib.sha256()
        state = self.vae.state_dict()
        for key in sorted(k for k in state if k.startswith(("encoder.", "quant_conv."))):
            h.update(key.encode())
            h.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
        return {
            "kind": self.name,
            "latent_channels": self.latent_channels,
            "factor": self.factor,
            "encoder_sha256": h.hexdigest()[:16],
        }

    def __repr__(self) -> str:
        where = os.path.join(self.source, self.subfolder) if self.subfolder else self.source
        return f"SDVAECodec({where!r}, scale={self.scale}, shift={self.shift}, factor={self.factor})"


@CODECS.register("sd_vae", SDVAECodecConfig)
def build_sd_vae(cfg: SDVAECodecConfig, device: torch.device | str = "cpu", path: str = "") -> SDVAECodec:
    return SDVAECodec(path or cfg.path, cfg.scale, cfg.shift, device=device, precision=cfg.precision, chunk=cfg.chunk)

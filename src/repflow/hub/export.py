"""``repflow export RUN --to diffusers DIR``: a generating run as a diffusers pipeline folder.

Layout (also what ``repflow.load``, ``repflow sample`` / ``eval`` / ``sweep`` and the Hub read)::

    DIR/model_index.json            diffusers: the pipeline class and its components
    DIR/pipeline.py                 ``from repflow.hub.pipeline import RepflowPipeline`` (custom pipeline file)
    DIR/transformer/                RepflowTransformer: config.json (the run's config) + safetensors
    DIR/vae/                        the codec's weights: AutoencoderKL (SD-VAE) or AutoencoderRAE (RAE); none for pixels
    DIR/codec/stats.*               RAE's latent statistics
    DIR/README.md                   the model card (Hub YAML metadata, provenance, metrics, how to load)

The exported sampling setting is the run's ``sample`` section under the sweep's best (``sampling.json``) when
one was stored; the weights are the EMA chosen by ``ema`` (-1 / None: the sweep's, else the run's first).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .._compat import require
from ..build import method_class
from ..config import ConfigError, replace, to_dict
from ..runtime.checkpoint import CKPT_RE
from ..runtime.exported import PREFIX, ExportedCheckpoint
from ..runtime.lookup import load_checkpoint


def export_diffusers(run: str | Path, out: str | Path, ema: float | None = None, license: str = "other") -> Path:
    """Write ``run``'s newest checkpoint (or the checkpoint given) as a diffusers pipeline folder ``out`` with a
    model card (``repflow export RUN --to diffusers OUT``, ``repflow.export``); ``ema``: the weights (None: the
    sweep's choice, else the first EMA; 0: raw). README "Share a model"."""
    from ..sample.load import load_run
    from ..sample.swept import with_swept
    from .card import write_card

    out = Path(out)
    ckpt = load_checkpoint(run)
    cfg = ckpt.config
    if isinstance(ckpt, ExportedCheckpoint):
        raise ConfigError(f"{run} is already an export; copy the folder, or export the training run")
    if not method_class(cfg).generates():
        how = (
            "export its decoder with `repflow rae export`" if cfg.method.kind == "rae_decoder" else "nothing to sample"
        )
        raise ConfigError(f"{ckpt.path} was trained with method {cfg.method.kind}, which does not generate images "
                          f"(no diffusers pipeline to export; {how})")  # fmt: skip
    if cfg.method.kind == "repa_e":  # its pipeline would need the tuned VAE in vae/: not written yet
        raise ConfigError(f"{ckpt.path} is a repa_e run: export its tuned VAE with `repflow export RUN --vae DIR` "
                          "and sample it with `repflow sample` (--to diffusers takes no repa_e run yet)")  # fmt: skip
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; export into a new folder")
    changes, ema, _ = with_swept(ckpt.path, {}, ema)
    loaded = load_run(ckpt.path, ema=ema, device="cpu")
    decay = loaded.ema
    stored = cfg.replace(sample=replace(cfg.sample, **changes),
                         train=replace(cfg.train, ema_decays=(decay,) if isinstance(decay, float) else ()))  # fmt: skip
    match = CKPT_RE.match(ckpt.path.name)
    step = int(match.group(1)) if match else 0
    require("diffusers")
    from .pipeline import PIPELINE_FILE, RepflowPipeline
    from .transformer import RepflowTransformer

    transformer = RepflowTransformer(repflow_config=to_dict(stored), network_names=sorted(loaded.networks), ema=decay,
                                  class_names=ckpt.class_names(), images_seen=images_seen(ckpt, step),
                                  train_step=step)  # fmt: skip
    own = {f"{PREFIX}{name}.{k}": v for name, net in loaded.networks.items() for k, v in net.state_dict().items()}
    transformer.load_state_dict(own, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    vae = {"sd_vae": lambda: loaded.codec.vae, "vae": lambda: _export_vae_codec(cfg, loaded.codec, out),
           "rae": lambda: _export_rae_codec(cfg, out)}.get(cfg.codec.kind)  # fmt: skip
    pipeline = RepflowPipeline(transformer=transformer, vae=vae() if vae else None)
    with torch.no_grad():
        pipeline.save_pretrained(str(out), safe_serialization=True)
    index = json.loads((out / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "RepflowPipeline"]  # diffusers loads DIR/pipeline.py (trust_remote_code)
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "pipeline.py").write_text(PIPELINE_FILE)
    write_card(out, ckpt, stored, decay, license)
    return out


def export_vae(run: str | Path, out: str | Path, ema: float | None = None) -> Path:
    """``repflow export RUN --vae OUT``: a repa_e run's tuned VAE as a diffusers ``AutoencoderKL`` directory, its
    latent batch norm's statistics (EMA ``ema``; None: the run's first, as the official ``save_vae_weights.py``
    takes the EMA model's) as ``latents_mean`` / ``latents_std`` with ``scaling_factor`` 1, so a frozen
    ``codec.kind=vae`` normalises exactly as the run's SiT saw its latents: ``(z - mean) / sqrt(var + eps)``."""
    from ..methods.repa_e import tuned_codec
    from ..runtime.checkpoint import select_weights

    out = Path(out)
    ckpt = load_checkpoint(run)
    cfg = ckpt.config
    if cfg.method.kind != "repa_e":
        raise ConfigError(f"{ckpt.path} was trained with method {cfg.method.kind}; --vae exports the VAE a repa_e run "
                          "tunes (a frozen codec's VAE is its codec.path already)")  # fmt: skip
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; export into a new folder")
    nets = method_class(cfg).inference_networks(cfg)
    nets["vae"].load_state_dict(ckpt.weights("vae"))
    file, _ = select_weights(cfg.train.ema_decays, "latent_norm", -1.0 if ema is None else ema, ckpt.weight_names())
    nets["latent_norm"].load_state_dict(ckpt.weights(file))
    vae = tuned_codec(cfg, nets).vae
    mean, std = nets["latent_norm"].mean_std()
    vae.register_to_config(scaling_factor=1.0, shift_factor=None, latents_mean=mean.tolist(), latents_std=std.tolist())
    vae.save_pretrained(str(out), safe_serialization=True)
    return out


def images_seen(ckpt, step: int) -> int:
    """Training images seen up to the checkpoint (state.pt's data position; steps x batch when it has none)."""
    f = ckpt.path / "state.pt"
    if f.is_file():
        try:
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            return int(state.get("images_seen", step * ckpt.config.train.batch_size))
        except Exception:  # an unreadable state file does not block an export of weights
            pass
    return step * ckpt.config.train.batch_size


def _copy_stats(cfg, out: Path) -> None:
    """The run's latent statistics (codec.stats) into ``codec/``, where the export's codec reads them."""
    if cfg.codec.stats:
        (out / "codec").mkdir()
        shutil.copy2(cfg.codec.stats, out / "codec" / f"stats{Path(cfg.codec.stats).suffix}")


def _export_vae_codec(cfg, codec, out: Path):
    """A diffusers autoencoder: the module itself (written to ``vae/`` by the pipeline), its statistics."""
    _copy_stats(cfg, out)
    return codec.vae


def _export_rae_codec(cfg, out: Path):
    """RAE: the decoder as a diffusers AutoencoderRAE in ``vae/`` (``repflow rae export``'s conversion for a
    rae_decoder run, a copy for an AutoencoderRAE folder), returned loaded; the latent statistics in ``codec/``."""
    from ..codecs.rae import decoder_path
    from ..codecs.rae_export import export_autoencoder_rae

    source = Path(decoder_path(cfg.codec.decoder)) if cfg.codec.decoder else None
    if source is None:
        raise ConfigError("the run's codec.decoder is not set: an RAE export needs the decoder it samples with")
    config = source / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == "AutoencoderRAE":
        shutil.copytree(source, out / "vae")
    else:
        export_autoencoder_rae(source, out / "vae", stats=cfg.codec.stats)
    _copy_stats(cfg, out)
    return require("diffusers").AutoencoderRAE.from_pretrained(str(out / "vae"))

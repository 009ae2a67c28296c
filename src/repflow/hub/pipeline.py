"""A diffusers ``DiffusionPipeline`` that samples a repflow export exactly as ``repflow sample`` does.

Components: ``transformer`` (:class:`~repflow.hub.transformer.RepflowTransformer`) and ``vae`` (the codec's
weights: an ``AutoencoderKL`` for SD-VAE latents, an ``AutoencoderRAE`` for RAE latents, none for pixels). The
sampler, steps, guidance and class names are the run's (its ``sample`` section, the sweep's best when one was
stored); every keyword of ``repflow.Model.sample`` overrides them per call. Sample ``i`` draws its noise from
the stream ``(seed, i)``, so the same seed gives the same images as ``repflow sample`` (same batch size).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .._compat import require
from .transformer import RepflowTransformer

diffusers = require("diffusers")

# the folder's pipeline.py (diffusers' custom-pipeline file): a re-export, so the code that runs is repflow's
PIPELINE_FILE = '''"""Custom pipeline file for diffusers: the class lives in repflow (pip install repflow)."""

from repflow.hub.pipeline import RepflowPipeline  # noqa: F401
from repflow.hub.transformer import RepflowTransformer  # noqa: F401
'''


class RepflowPipeline(diffusers.DiffusionPipeline):
    """``pipe(class_labels=["sneaker", 3], num_images_per_label=2, seed=0).images``: PIL images by default."""

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]  # pixel-space models have none (a default value would make it a config field)

    def __init__(self, transformer: RepflowTransformer, vae):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """An export folder or Hub id (``org/name[@revision]``). Its ``pipeline.py`` is run without
        ``trust_remote_code=True`` only when it is, byte for byte, the re-export repflow writes."""
        from ..runtime.exported import locate

        folder = locate(str(pretrained_model_name_or_path))
        script = folder / "pipeline.py"
        if script.is_file() and script.read_text() == PIPELINE_FILE:
            kwargs.setdefault("trust_remote_code", True)
        return super().from_pretrained(str(folder), **kwargs)

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> label, as the training data named them (DiTPipeline's ``labels``)."""
        return {name: i for i, name in enumerate(self.transformer.config.class_names or [])}

    def repflow_model(self):
        """The pipeline as a :class:`repflow.Model` (the networks and codec are the pipeline's own modules)."""
        from ..api import Model
        from ..build import method_class

        cfg = self.transformer.repflow_config()
        device = self.device
        codec = codec_around(cfg, self.vae, device, self.transformer.config.get("_name_or_path", ""))
        networks = dict(self.transformer.networks.items())
        denoiser = method_class(cfg).denoiser(cfg, networks, device, codec)
        return Model(cfg, denoiser, Path(self.transformer.config.get("_name_or_path", "") or "."),
                     self.transformer.config.ema)  # fmt: skip

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int | str] | None = None,
        num_images_per_label: int = 1,
        num_images: int | None = None,
        seed: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **sampling,
    ):
        """``class_labels``: indices or the run's class names (``self.labels``), ``num_images_per_label`` each;
        otherwise ``num_images`` with balanced labels (image i has class i mod K). ``seed`` and ``sampling``
        (``sampler=``, ``steps=``, ``cfg=``, ``cfg_interval=``, ``indices=``, ...): as ``repflow.Model.sample``.
        ``output_type``: "pil", "np" (N, H, W, C floats in [0, 1]) or "pt" (N, C, H, W uint8)."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        model = self.repflow_model()
        classes = None
        if class_labels is not None:
            from ..sample.runs import resolve_classes

            names = list(self.transformer.config.class_names or [])
            classes = resolve_classes([str(c) for c in class_labels], names, model.num_classes)
        images = model.sample(num_images, classes=classes, per_class=num_images_per_label, seed=seed, **sampling)
        if output_type == "pt":
            out = images
        elif output_type == "np":
            out = (images.permute(0, 2, 3, 1).float() / 255).numpy()
        else:
            from ..runtime.images import to_pil

            out = [to_pil(img) for img in images]
        return diffusers.ImagePipelineOutput(images=out) if return_dict else (out,)


def codec_around(cfg, vae, device: torch.device, transformer_dir: str = ""):
    """The run's codec, decoding with the pipeline's ``vae`` module (none: pixels)."""
    from ..codecs import build_codec

    kind = cfg.codec.kind
    if kind == "pixel":
        return build_codec(cfg.codec, device)
    if vae is None:
        raise ValueError(f"this export's codec is {kind}: the pipeline needs its vae component")
    if kind == "sd_vae":
        from ..codecs.sd_vae import SDVAECodec

        c = cfg.codec
        return SDVAECodec(c.path, c.scale, c.shift, device=device, precision=c.precision, chunk=c.chunk, vae=vae)
    if kind == "vae":
        from ..codecs.vae import VAECodec, auto

        c = cfg.codec
        stats = c.stats and _with_export_files(cfg, transformer_dir).codec.stats  # codec/stats.* of the folder
        return VAECodec(c.path, auto(c.scale), auto(c.shift), stats, device=device, precision=c.precision,
                        chunk=c.chunk, vae=vae)  # fmt: skip
    if kind == "rae":
        return build_codec(_with_export_files(cfg, transformer_dir).codec, device)
    raise ValueError(f"no diffusers component holds a {kind} codec")


def _with_export_files(cfg, transformer_dir: str):
    from ..runtime.exported import with_codec_files

    if not transformer_dir:  # the codec reads its normalisation or statistics from the folder
        raise ValueError(f"a pipeline in {cfg.codec.kind} latents with statistics samples once loaded from its "
                         "folder (from_pretrained)")  # fmt: skip
    return with_codec_files(cfg, Path(transformer_dir).parent)

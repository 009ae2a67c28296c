"""A shipped preset pointed at one's own image folder (``repflow train demo-fashion-reg data.dataset=image_folder
data.root=photos``): the shapes come from the images, as ``repflow init`` would choose them, and the start-up says
so."""

from __future__ import annotations

from .folder_survey import survey
from .init import CPU_TOKENS, GPU_TOKENS, JIT_TOKEN_VALUES, MAX_TOKEN_VALUES, choose_patch, choose_size

ADAPTED = ("data.channels", "data.resolution", "model.patch_size")


def fit_preset_to_folder(cfg, overrides: list[str]):
    """A shipped preset pointed at one's own image folder takes the channels, resolution and patch size from the
    images (a preset's values are for its own data: Fashion-MNIST's one channel would train an RGB folder as
    greyscale), and a folder without class folders samples with sample.cfg=1 (the recipe's guidance needs labels),
    except what the overrides set. Returns (config, the start-up line saying so, or "").

    Only a pixel-space preset made for other data (the overrides switch it to ``data.dataset=image_folder``): an
    ImageNet preset is already for a folder of images (its resolution and patch are the recipe, ``data.root`` is
    all it asks), and in a latent space (SD-VAE, RAE) the patch counts latent values, not pixels."""
    from .config import replace

    given = {item.split("=", 1)[0].strip().replace("[", ".").replace("]", "") for item in overrides}
    own_folder = cfg.data.dataset == "image_folder" and cfg.data.root and "data.dataset" in given
    if not own_folder or cfg.codec.kind != "pixel":
        return cfg, ""
    if "model.arch" in given:
        given.add("model.patch_size")
    free = [k for k in ADAPTED if k not in given]
    if not free and "sample.cfg" in given:
        return cfg, ""
    s = survey(cfg.data.root)
    max_values = JIT_TOKEN_VALUES if cfg.model.family == "jit" else MAX_TOKEN_VALUES
    import torch

    cap = GPU_TOKENS if torch.cuda.is_available() else CPU_TOKENS
    channels = cfg.data.channels if "data.channels" in given else s.channels
    resolution, patch = choose_size(s.side, channels, max_values, cap)
    if "data.resolution" in given:
        patch = choose_patch(cfg.data.resolution, channels, max_values)
    chosen = {"data.channels": channels, "data.resolution": resolution, "model.patch_size": patch}
    if not s.classes and "sample.cfg" not in given:  # the recipe's guidance needs labels a flat folder lacks
        free.append("sample.cfg")
        chosen["sample.cfg"] = 1.0
    changes = {k: chosen[k] for k in free if _value(cfg, k) != chosen[k]}
    if not changes:
        return cfg, ""
    said = ", ".join(f"{k}={v}" for k, v in changes.items())
    note = (f"{said} taken from the images in {cfg.data.root} (the preset's are for its own data; set them to "
            f"keep yours; `repflow init {cfg.data.root}` writes a config with the reasons)")  # fmt: skip
    return replace(cfg, **changes), note


def _value(cfg, key: str):
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)

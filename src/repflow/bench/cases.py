"""The networks ``repflow bench gpu`` times, each as a resolved config on synthetic data of its real shape.

SiT-XL/2 + REG on SD-VAE latents (32x32x4) with cached DINOv2-B features; JiT-B/16 on 256 px pixels;
DiT^DH-XL on RAE latents (DINOv2-B tokens: 16x16x768). ``--tiny`` swaps in one-block models of the same
families on small inputs, so the whole command runs on a CPU in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..build import resolve_config
from ..config import Config, load_config
from .common import bench_config, bench_env


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[int, list[str]], Config]  # (batch, overrides) -> resolved config


@dataclass(frozen=True)
class _Classes:  # what resolve_config reads from a dataset
    num_classes: int = 1000


@dataclass(frozen=True)
class _Shape:  # what resolve_config reads from a codec: the data's shape in model space, no weights loaded
    shape: tuple[int, int, int]

    def model_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        return self.shape


def preset_config(preset: str, shape: tuple[int, int, int], batch: int, overrides: list[str]) -> Config:
    """A preset resolved as training would resolve it on 1000-class data of ``shape`` (C, H, W) in model space
    (the dimension shift included), with ``train.batch_size=batch``."""
    items = [f"train.batch_size={batch}", "data.root=/synthetic", *overrides]
    cfg = resolve_config(load_config(preset, items), _Classes(), _Shape(shape))
    from ..build import method_class

    return method_class(cfg).resolve(cfg, bench_env(cfg))


def reg_case(arch: str, extra: tuple[str, ...] = ()) -> Case:
    return Case(f"{arch}+REG", lambda b, o: bench_config(arch, "reg", b, [*extra, *o]))


def preset_case(name: str, preset: str, shape: tuple[int, int, int], extra: tuple[str, ...] = ()) -> Case:
    return Case(name, lambda b, o: preset_config(preset, shape, b, [*extra, *o]))


TINY_SIT = ("model.depth=2", "model.hidden_size=64", "model.num_heads=2", "repa.depth=1", "repa.projector_dim=64")
TINY_JIT = ("model.arch=JiT-T/16", "model.depth=2", "model.hidden_size=64", "model.num_heads=2",
            "model.bottleneck=16", "model.context_tokens=4", "model.context_start=1")  # fmt: skip
TINY_DH = ("model.arch=DiTDH-T/1", "model.depth=2", "model.hidden_size=64", "model.num_heads=2",
           "model.head_depth=1", "model.head_width=96", "model.head_heads=2")  # fmt: skip


def cases(tiny: bool) -> dict[str, Case]:
    """The three families, full size or tiny, by the short name ``--only`` takes."""
    if tiny:
        found = [
            reg_case("SiT-T/2", TINY_SIT),
            preset_case("JiT-T/16", "jit-b16-in256", (3, 32, 32), TINY_JIT),
            preset_case("DiTDH-T/1", "rae-ditdh-xl-in256", (32, 4, 4), TINY_DH),
        ]
    else:
        found = [
            reg_case("SiT-XL/2"),
            preset_case("JiT-B/16", "jit-b16-in256", (3, 256, 256)),
            preset_case("DiTDH-XL/1", "rae-ditdh-xl-in256", (768, 16, 16)),
        ]
    return dict(zip(("sit", "jit", "dit_dh"), found, strict=True))


def with_train(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))

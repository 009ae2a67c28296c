"""Shared test helpers. Everything runs on CPU, offline, with tiny models (< 3M params, <= 64 tokens)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from repflow.config import Config, load_config  # noqa: E402

torch.set_num_threads(1)  # pytest-xdist runs one worker per core
os.environ.setdefault("OMP_NUM_THREADS", "1")  # and training's train.threads=auto keeps it

TINY = [
    "data.dataset=synthetic",
    "data.resolution=8",
    "data.channels=3",
    "data.synthetic_size=64",
    "model.arch=SiT-T/2",
    "model.depth=2",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.num_classes=4",
    "train.batch_size=8",
    "train.steps=4",
    "train.lr=1e-3",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.sample_num=4",
    "train.ema_decays=[0.9]",
    "sample.steps=2",
    "sample.batch_size=4",
    "sample.sampler=euler",
]


def tiny_config(*overrides: str) -> Config:
    """A config that trains in well under a second per step on one CPU thread."""
    return load_config(None, TINY + list(overrides))


@pytest.fixture
def tiny():
    return tiny_config


def save_tiny_vae(path, seed: int = 0, **overrides):
    """A randomly initialised diffusers AutoencoderKL of the real architecture, tiny (factor 2, 4 latent
    channels, ~44k params), saved like a hub checkpoint (``save_pretrained``)."""
    from repflow._compat import require

    diffusers = require("diffusers")
    torch.manual_seed(seed)
    kwargs = dict(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    )
    kwargs.update(overrides)
    vae = diffusers.AutoencoderKL(**kwargs)
    vae.save_pretrained(str(path))
    return vae


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory):
    """Directory of a saved tiny random VAE (shared by the whole session; never modified)."""
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    save_tiny_vae(path)
    return path


def colour_folder(root, classes: int = 2, per_class: int = 6, size: int = 12):
    """An ImageNet-layout folder of small PNGs (class k: a colour ramp), for latent-space tests."""
    import numpy as np
    from PIL import Image

    for k in range(classes):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(per_class):
            ramp = np.linspace(0, 255, size, dtype=np.float64)[None, :, None]
            colour = np.array([(37 * (k + 1) + 20 * i) % 256, 255 - 40 * k, 17 * i], dtype=np.float64)
            img = (0.5 * ramp + 0.5 * colour[None, None, :]).repeat(size, 0).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{k}" / f"{i:03d}.png")
    return root


def latent_overrides(vae, root, *extra: str) -> list[str]:
    """TINY, in the latent space of the tiny VAE (factor 2: 8 px images -> 4x4x4 latents -> 4 tokens)."""
    return TINY + [
        "data.dataset=image_folder",
        f"data.root={root}",
        "data.resolution=8",
        "data.workers=0",  # no worker processes outliving a test (they would be joined at exit)
        "model.num_classes=-1",
        "codec.kind=sd_vae",
        f"codec.path={vae}",
        *extra,
    ]


def sigkill_when_flagged(script: str, args: list[str], flag, what: str) -> None:
    """Run ``python -c script *args`` (this checkout's repflow first on the path), wait until it creates
    ``flag`` (the moment to interrupt), then SIGKILL it: the harshest interruption a run can suffer."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(root, "src"), root])}
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=root, env=env)
    try:
        for _ in range(1200):
            if flag.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert flag.exists(), f"the child never reached {what}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

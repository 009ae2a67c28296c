"""Reference statistics: from an ADM reference batch, a folder of images or a dataset, cached once.

A reference is named by ``--ref``:

- ``path/to/VIRTUAL_imagenet256_labeled.npz``: ADM's format. Its precomputed ``mu``/``sigma`` (and ``mu_s``/
  ``sigma_s`` for sFID) are used when present, as the ADM evaluator does; the features of ``arr_0`` are
  computed (and cached) only when needed (precision/recall, or no precomputed statistics).
- ``path/to/folder``: every image under it.
- ``fashion_mnist``, ``mnist:test``, ``synthetic``, ``image_folder`` (with ``data_root``) ...: a repflow dataset
  (``name[:split]``, default split train) prepared as for training at the evaluated resolution; its first
  ``count`` images (0: all).

Computed references are cached in ``~/.cache/repflow/fid_stats/`` (or ``$REPFLOW_CACHE/fid_stats``) under a key
holding the content (each file's name, size and modification time; a dataset's pixel hash), split,
resolution, count, resize mode and the Inception's weight fingerprint; reusing them is said on stderr.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from .features import extract_features
from .fid import Stats, compute_stats, save_stats
from .inception import TFInception, cache_home
from .sources import FolderSource, ImageSource, NpzSource, list_images, to_rgb_uint8

DATASETS = ("fashion_mnist", "mnist", "synthetic", "image_folder")


@dataclass
class Reference:
    description: str
    pool: Stats
    spatial: Stats | None
    features: np.ndarray | None  # (N, 2048) pool_3 features, for precision / recall
    resolution: tuple[int, int] | None  # (H, W) of the reference images, when known
    count: int
    cache_file: str = ""
    skipped: str = ""  # a folder's unreadable / wrong-size files left out, in one line ("" when none)

    def to_json(self) -> dict:
        res = None if self.resolution is None else list(self.resolution)
        out = {"source": self.description, "count": self.count, "resolution": res, "cache": self.cache_file}
        return {**out, "skipped_files": self.skipped} if self.skipped else out


def _npz_keys(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not an .npz archive") from err


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]


def content_key(files: list[Path], root: Path) -> str:
    """What a folder's statistics depend on: every file's name, size and modification time (so images added,
    removed or replaced give new statistics, and a moved copy of the same files keeps them)."""
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        name = str(f.relative_to(root)) if f.is_relative_to(root) else str(f)
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def _compute_or_load(
    key: str, description: str, make_source, inception: TFInception, batch_size: int, progress: bool
) -> Reference:
    cache = cache_home() / "fid_stats" / f"{_slug(key)}-{inception.resize}-{inception.fingerprint()}.npz"
    if cache.is_file():
        if progress:
            print(f"reference {description}: statistics reused from {cache}", file=sys.stderr)
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            features = z["pool"]
            small = features if features.shape[0] <= features.shape[1] else None  # for the low-rank FID route
            pool = Stats(z["mu"], z["sigma"], meta["count"], features=small)
            spatial = Stats(z["mu_s"], z["sigma_s"], meta["count"])
        skipped = _warn_skipped(meta.get("skipped", ""))  # said on every use, as for a sample folder
        return Reference(meta["description"], pool, spatial, features, tuple(meta["resolution"]), meta["count"],
                         str(cache), skipped)  # fmt: skip
    source: ImageSource = make_source()
    feats = extract_features(source, inception, batch_size, spatial=True, logits=False, progress=progress,
                             desc=f"reference {description}")  # fmt: skip
    pool, spatial = compute_stats(feats.pool), compute_stats(feats.spatial)
    skipped = _warn_skipped(source.skipped_summary() if isinstance(source, FolderSource) else "")
    meta = {"description": description, "count": len(feats), "resolution": list(source.resolution), "skipped": skipped}
    save_stats(cache, mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma, pool=feats.pool,
               meta=np.array(json.dumps(meta)))  # fmt: skip
    return Reference(description, pool, spatial, feats.pool, source.resolution, len(feats), str(cache), skipped)


def _warn_skipped(summary: str) -> str:
    """Say that files of a reference folder were left out (FolderSource skips them as it skips samples')."""
    if summary:
        print(f"warning: reference: {summary}", file=sys.stderr)
    return summary


def _adm_reference(path: Path, inception: TFInception, need_features: bool, batch_size: int, progress: bool):
    keys = _npz_keys(path)
    has_stats = {"mu", "sigma"} <= keys
    if not has_stats and "arr_0" not in keys:
        raise ValueError(f"{path} has neither precomputed mu/sigma nor images (arr_0); it is not an ADM reference")
    if has_stats and not need_features:
        with np.load(path, allow_pickle=False) as z:
            pool = Stats(z["mu"], z["sigma"], 0)
            spatial = Stats(z["mu_s"], z["sigma_s"], 0) if {"mu_s", "sigma_s"} <= keys else None
        resolution = NpzSource(path).resolution if "arr_0" in keys else None
        count = len(NpzSource(path)) if "arr_0" in keys else 0
        return Reference(str(path), pool, spatial, None, resolution, count)
    if "arr_0" not in keys:
        raise ValueError(f"{path} holds statistics only; precision/recall need its images (arr_0)")
    ref = _compute_or_load(f"npz-{path.stem}-{_file_key(path)}", str(path), lambda: NpzSource(path), inception,
                           batch_size, progress)  # fmt: skip
    if has_stats:  # ADM's own statistics win (they may come from more images than arr_0 holds)
        with np.load(path, allow_pickle=False) as z:
            ref.pool = Stats(z["mu"], z["sigma"], 0)
            if {"mu_s", "sigma_s"} <= keys:
                ref.spatial = Stats(z["mu_s"], z["sigma_s"], 0)
    return ref


class DatasetSource(ImageSource):
    """The first ``count`` images of a repflow dataset, prepared as for training (resize / ADM centre crop)."""

    def __init__(self, name: str, split: str, resolution: int, count: int = 0, root: str = ""):
        from ..data import build_dataset

        if name == "image_folder" and not root:
            raise ValueError("an image_folder reference needs the dataset folder (--data-root)")
        cfg = DataConfig(dataset=name, split=split, resolution=resolution, channels=3, root=root)  # type: ignore[arg-type]
        self.dataset = build_dataset(cfg)
        self.count = len(self.dataset) if count <= 0 else min(count, len(self.dataset))
        self.description = f"{name}:{split}" if name != "image_folder" else root
        self._resolution = (resolution, resolution)

    def __len__(self) -> int:
        return self.count

    @property
    def resolution(self) -> tuple[int, int]:
        return self._resolution

    def batches(self, batch_size: int):
        for lo in range(0, self.count, batch_size):
            items = [(i, False) for i in range(lo, min(lo + batch_size, self.count))]
            yield to_rgb_uint8(self.dataset.get_batch(items).images)


def has_images(spec: str) -> bool:
    """False only for an .npz holding statistics without images (no precision/recall possible)."""
    path = Path(spec).expanduser()
    return not (path.suffix == ".npz" and path.is_file() and "arr_0" not in _npz_keys(path))


def peek_resolution(spec: str) -> tuple[int, int] | None:
    """The (H, W) of a file or folder reference, read cheaply (header / first image); None for datasets."""
    path = Path(spec).expanduser()
    if path.suffix == ".npz" and path.is_file() and "arr_0" in _npz_keys(path):
        return NpzSource(path).resolution
    if path.is_dir():
        files = list_images(path)
        return FolderSource(path).resolution if files else None
    return None


def load_reference(
    spec: str,
    inception: TFInception,
    resolution: int = 0,
    count: int = 0,
    need_features: bool = False,
    batch_size: int = 50,
    progress: bool = True,
    data_root: str = "",
) -> Reference:
    """Resolve ``spec`` (see the module docstring) into statistics, computing and caching them if needed."""
    path = Path(spec).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"reference file '{path}' does not exist")
        return _adm_reference(path, inception, need_features, batch_size, progress)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise FileNotFoundError(f"no images found under reference folder '{path}'")
        n = len(files) if count <= 0 else min(count, len(files))
        digest = content_key(files[:n], path)
        return _compute_or_load(f"folder-{path.name}-{digest}-n{n}", str(path), lambda: FolderSource(path, n),
                                inception, batch_size, progress)  # fmt: skip
    name, _, split = spec.partition(":")
    split = split or "train"
    if name not in DATASETS:
        raise FileNotFoundError(
            f"reference '{spec}' is not an .npz, a folder, or a dataset ({', '.join(DATASETS)}[:train|test])"
        )
    if split not in ("train", "test"):
        raise ValueError(f"reference split must be train or test, got {split!r}")
    if resolution <= 0:
        raise ValueError(f"a dataset reference ('{spec}') needs the resolution of the evaluated images")
    source = DatasetSource(name, split, resolution, count, data_root)  # lists the files (cheap), decodes nothing
    files = getattr(source.dataset, "files", None)
    content = content_key(list(files[: source.count]), Path(data_root)) if files else source.dataset.fingerprint()
    key = f"{name}-{content}-{split}-{resolution}px-n{source.count}"
    return _compute_or_load(key, f"{name}:{split}", lambda: source, inception, batch_size, progress)

"""Reference statistics in every feature space: from an ADM reference batch, a folder of images or a dataset,
computed once per space and cached.

A reference is named by ``--ref``:

- ``path/to/VIRTUAL_imagenet256_labeled.npz``: ADM's format. Its precomputed ``mu``/``sigma`` (and ``mu_s``/
  ``sigma_s`` for sFID) are the Inception space's statistics when present, as the ADM evaluator uses them; the
  features of ``arr_0`` are computed (and cached) only when needed (KID, precision/recall, other spaces, or no
  precomputed statistics).
- ``path/to/folder``: every image under it.
- ``fashion_mnist``, ``mnist:test``, ``synthetic``, ``image_folder`` (with ``data_root``) ...: a repflow dataset
  (``name[:split]``, default split train) prepared as for training at the evaluated resolution; its first
  ``count`` images (0: all).

Computed references are cached in ``~/.cache/repflow/fid_stats/`` (or ``$REPFLOW_CACHE/fid_stats``), one file per
feature space, under a key holding the content (each file's name, size and modification time; a dataset's pixel
hash), split, resolution, count and the extractor's fingerprint (weights, input size, preprocessing); reusing them
is said on stderr. A cache file holds each output's mean and covariance, the per-image features KID and
precision/recall need, and the reference's identity: the sha256 of its uint8 pixels, count and resolution.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DataConfig
from .extractors import INCEPTION, FeatureExtractor, as_extractors
from .features import extract_features
from .fid import Stats, compute_stats, save_stats
from .inception import TFInception, cache_home
from .sources import FolderSource, ImageSource, NpzSource, list_images, to_rgb_uint8

DATASETS = ("fashion_mnist", "mnist", "synthetic", "image_folder")


@dataclass
class SpaceFeatures:
    """One image set in one feature space."""

    stats: dict[str, Stats]  # output -> mean and covariance
    features: dict[str, np.ndarray] = field(default_factory=dict)  # output -> (N, D) per image, where kept
    cache_file: str = ""


@dataclass
class Reference:
    description: str
    spaces: dict[str, SpaceFeatures]  # space name -> statistics and features
    resolution: tuple[int, int] | None  # (H, W) of the reference images, when known
    count: int
    content_sha256: str = ""  # of the images' uint8 pixels, when they were read (now or when cached)
    statistics_sha256: str = ""  # of ADM's precomputed Inception statistics, when those are used
    skipped: str = ""  # a folder's unreadable / wrong-size files left out, in one line ("" when none)

    def to_json(self) -> dict:
        res = None if self.resolution is None else list(self.resolution)
        out = {"source": self.description, "count": self.count, "resolution": res}
        if self.content_sha256:
            out["content_sha256"] = self.content_sha256
        if self.statistics_sha256:
            out["statistics_sha256"] = self.statistics_sha256
        if self.skipped:
            out["skipped_files"] = self.skipped
        out["cache"] = {name: sf.cache_file for name, sf in self.spaces.items() if sf.cache_file}
        return out

    def stats(self, space: str, output: str) -> Stats:
        return self.spaces[space].stats[output]

    def features(self, space: str, output: str) -> np.ndarray:
        return self.spaces[space].features[output]


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


def _space_from_arrays(arrays: dict[str, np.ndarray], extractor: FeatureExtractor, cache_file: str) -> SpaceFeatures:
    """Statistics (and kept features) from a cache file's arrays: the one route, fresh or reused, so a reused
    reference gives the same numbers as a fresh one."""
    stats, features = {}, {}
    for out in extractor.cached:
        feats = arrays.get(f"{out}.features")
        small = feats if feats is not None and feats.shape[0] <= feats.shape[1] else None  # the low-rank FD route
        stats[out] = Stats(arrays[f"{out}.mu"], arrays[f"{out}.sigma"], int(arrays["count"]), features=small)
        if feats is not None:
            features[out] = feats
    return SpaceFeatures(stats, features, cache_file)


def _cache_path(key: str, extractor: FeatureExtractor) -> Path:
    return cache_home() / "fid_stats" / f"{_slug(key)}-{_slug(extractor.space.name)}-{extractor.fingerprint()}.npz"


def _compute_or_load(
    key: str,
    description: str,
    make_source: Callable[[], ImageSource],
    extractors: list[FeatureExtractor],
    batch_size: int,
    progress: bool,
) -> Reference:
    """The reference in every space of ``extractors``: cached spaces are read, the others computed in one pass."""
    spaces, meta = {}, {}
    todo = []
    for ex in extractors:
        cache = _cache_path(key, ex)
        if not cache.is_file():
            todo.append(ex)
            continue
        if progress:
            print(f"reference {description}: {ex.space.name} statistics reused from {cache}", file=sys.stderr)
        with np.load(cache, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["meta"]))
        spaces[ex.space.name] = _space_from_arrays(arrays, ex, str(cache))
    if todo:
        source = make_source()
        feats = extract_features(source, [(ex, ex.cached) for ex in todo], batch_size, progress,
                                 desc=f"reference {description}")  # fmt: skip
        skipped = source.skipped_summary() if isinstance(source, FolderSource) else ""
        meta = {"description": description, "count": len(feats), "resolution": list(source.resolution),
                "content_sha256": feats.content_sha256, "skipped": skipped}  # fmt: skip
        for ex in todo:
            arrays = {"count": np.array(len(feats)), "meta": np.array(json.dumps({**meta, "extractor": ex.identity()}))}
            for out in ex.cached:
                values = feats.get(ex.space.name, out)
                st = compute_stats(values)
                arrays.update({f"{out}.mu": st.mu, f"{out}.sigma": st.sigma})
                if out in ex.kept:
                    arrays[f"{out}.features"] = values
            cache = _cache_path(key, ex)
            save_stats(cache, **arrays)
            spaces[ex.space.name] = _space_from_arrays(arrays, ex, str(cache))
    skipped = _warn_skipped(meta.get("skipped", ""))  # said on every use, cached or not, as for a sample folder
    return Reference(meta["description"], spaces, tuple(meta["resolution"]), meta["count"],
                     meta.get("content_sha256", ""), skipped=skipped)  # fmt: skip


def _warn_skipped(summary: str) -> str:
    """Say that files of a reference folder were left out (FolderSource skips them as it skips samples')."""
    if summary:
        print(f"warning: reference: {summary}", file=sys.stderr)
    return summary


def _adm_statistics(path: Path, keys: set[str]) -> tuple[SpaceFeatures, str]:
    """ADM's precomputed Inception statistics (count unknown: 0) and their sha256."""
    digest = hashlib.sha256()
    with np.load(path, allow_pickle=False) as z:
        stats = {"pool": Stats(z["mu"], z["sigma"], 0)}
        if {"mu_s", "sigma_s"} <= keys:
            stats["spatial"] = Stats(z["mu_s"], z["sigma_s"], 0)
        for k in ("mu", "sigma", "mu_s", "sigma_s"):
            if k in keys:
                digest.update(np.ascontiguousarray(z[k]).tobytes())
    return SpaceFeatures(stats), digest.hexdigest()


def _adm_reference(path: Path, extractors: list[FeatureExtractor], need_features: bool, batch_size: int,
                   progress: bool) -> Reference:  # fmt: skip
    keys = _npz_keys(path)
    has_stats = {"mu", "sigma"} <= keys
    if not has_stats and "arr_0" not in keys:
        raise ValueError(f"{path} has neither precomputed mu/sigma nor images (arr_0); it is not an ADM reference")
    # the Inception space comes from ADM's statistics unless per-image features are needed
    from_stats = [ex for ex in extractors if ex.space.name == INCEPTION and has_stats and not need_features]
    computed = [ex for ex in extractors if ex not in from_stats]
    if computed and "arr_0" not in keys:
        what = ", ".join(ex.space.name for ex in computed)
        raise ValueError(f"{path} holds statistics only; per-image features ({what}) need its images (arr_0)")
    if computed:
        ref = _compute_or_load(f"npz-{path.stem}-{_file_key(path)}", str(path), lambda: NpzSource(path), computed,
                               batch_size, progress)  # fmt: skip
    else:
        source = NpzSource(path) if "arr_0" in keys else None
        ref = Reference(str(path), {}, source.resolution if source else None, len(source) if source else 0)
    if has_stats and any(ex.space.name == INCEPTION for ex in extractors):
        # ADM's own statistics win (they may come from more images than arr_0 holds); the features stay
        adm, ref.statistics_sha256 = _adm_statistics(path, keys)
        kept = ref.spaces.get(INCEPTION)
        adm.features, adm.cache_file = (kept.features, kept.cache_file) if kept else ({}, "")
        ref.spaces[INCEPTION] = adm
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
    extractors: list[FeatureExtractor] | TFInception,
    resolution: int = 0,
    count: int = 0,
    need_features: bool = False,
    batch_size: int = 50,
    progress: bool = True,
    data_root: str = "",
) -> Reference:
    """Resolve ``spec`` (see the module docstring) into statistics in the space of every extractor (the
    Inception alone when given a ``TFInception``), computing and caching them if needed. ``need_features``: the
    Inception's per-image features are needed (an ADM batch's precomputed statistics do not suffice)."""
    if isinstance(extractors, TFInception):
        extractors = [as_extractors(extractors).get(INCEPTION)]
    path = Path(spec).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"reference file '{path}' does not exist")
        return _adm_reference(path, extractors, need_features, batch_size, progress)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise FileNotFoundError(f"no images found under reference folder '{path}'")
        n = len(files) if count <= 0 else min(count, len(files))
        digest = content_key(files[:n], path)
        return _compute_or_load(f"folder-{path.name}-{digest}-n{n}", str(path), lambda: FolderSource(path, n),
                                extractors, batch_size, progress)  # fmt: skip
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
    return _compute_or_load(key, f"{name}:{split}", lambda: source, extractors, batch_size, progress)

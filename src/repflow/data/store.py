"""A generic, memory-mapped store of per-image arrays (latent posteriors, encoder features), sharded and resumable.

On-disk format (version 1): a directory holding

- ``manifest.json``: ``{"format": "repflow-array-store", "version": 1, "count": N, "flips": bool,
  "shard_size": S, "num_shards": K, "fields": {name: {"shape": [...], "dtype": "float16"}, ...},
  "meta": {...}, "info": {...}}``. ``meta`` identifies what was encoded (codec or encoder, resolution, image
  count, dataset fingerprint); a reader passes what its run expects and any difference is refused. ``info`` is
  informational (the VAE path, tool versions). Written last and atomically: its presence means the field files
  exist with the right size.
- ``<name>.npy``: one standard NumPy ``.npy`` file per field, shape ``(N * copies, *shape)``, C order, where
  ``copies`` is 2 when flipped copies are stored, else 1. Item ``(index, flip)`` is row ``index * copies + flip``.
  Any tool can read it: ``np.load("mean.npy", mmap_mode="r")``.
- ``shards/<k>.done``: a JSON marker ``{"shard": k, "items": [lo, hi], "bad_files": [...], "seconds": s}``
  written atomically after the rows of items ``[k * S, min((k + 1) * S, N))`` are on disk. A reader needs every
  marker; an interrupted writer redoes exactly the shards without one, so there are no holes or duplicates.

Rows are written with ``os.pwrite`` at their byte offsets (never through a shared writable memory map), so
processes writing disjoint shards into the same file cannot clobber each other's pages.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMAT, VERSION = "repflow-array-store", 1
MANIFEST = "manifest.json"
SHARDS = "shards"
SOURCE = "source"  # the encoding driver adds it to every store: the dataset index actually read for a row


_TORCH_DTYPES = {
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "bool": torch.bool,
}


class StoreMismatchError(ValueError):
    """A store exists but was made for something else (another codec, resolution or dataset)."""


@dataclass(frozen=True)
class Field:
    shape: tuple[int, ...]  # per item
    dtype: str  # a NumPy dtype name: float16, float32, int64, uint8, ...

    def __post_init__(self) -> None:
        if np.dtype(self.dtype).name not in _TORCH_DTYPES:
            raise ValueError(f"unsupported field dtype {self.dtype!r}; choose from {sorted(_TORCH_DTYPES)}")

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": np.dtype(self.dtype).name}

    @staticmethod
    def from_json(d: dict) -> Field:
        return Field(tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name)


def _canonical(value: Any) -> Any:
    """JSON round trip, so tuples and lists (and numpy scalars) compare equal to what the manifest holds."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old file or the whole new one, never half of it


def _shape_str(f: Field) -> str:
    return f"{'x'.join(map(str, f.shape)) or 'scalar'} {f.dtype}"


class ArrayStore:
    """Named per-item arrays for ``count`` dataset items (and optionally their flipped copies).

    Build with :meth:`create` (or :func:`repflow.data.encode.encode_dataset`), read with :meth:`open` then
    :meth:`read`. Memory maps are opened lazily in each process and are not pickled, so a store can be handed
    to DataLoader workers under fork or spawn.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        self.count: int = int(manifest["count"])
        self.flips: bool = bool(manifest["flips"])
        self.copies = 2 if self.flips else 1
        self.shard_size: int = int(manifest["shard_size"])
        self.num_shards: int = int(manifest["num_shards"])
        self.fields: dict[str, Field] = {k: Field.from_json(v) for k, v in manifest["fields"].items()}
        self.meta: dict = manifest.get("meta", {})
        self.info: dict = manifest.get("info", {})
        self._maps: dict[str, np.ndarray] = {}

    # -- creating -------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        count: int,
        fields: Mapping[str, Field],
        meta: Mapping[str, Any],
        flips: bool = False,
        shard_size: int = 4096,
        info: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> ArrayStore:
        """A new empty store, or the existing one at ``path`` if it has the same layout and meta (resume).

        An existing store made for something else is refused unless ``overwrite``; a non-empty directory that
        is not a store is always refused (we never delete files we did not write).
        """
        path = Path(path)
        if count <= 0:
            raise ValueError("cannot create an array store for an empty dataset")
        if shard_size <= 0:
            raise ValueError(f"shard size must be positive, got {shard_size}")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "count": int(count),
            "flips": bool(flips),
            "shard_size": int(shard_size),
            "num_shards": -(-int(count) // int(shard_size)),
            "fields": {k: f.to_json() for k, f in fields.items()},
            "meta": _canonical(dict(meta)),
            "info": _canonical(dict(info or {})),
        }
        if (path / MANIFEST).is_file():
            old = cls._read_manifest(path)
            layout = ("count", "flips", "fields", "meta")
            same = all(old.get(k) == manifest[k] for k in layout)
            if same and not overwrite:
                store = cls(path, old)  # resume: keep the finished shards and their shard size
                for name, f in store.fields.items():
                    store._check_file(name, f)
                return store
            if not overwrite:
                diff = cls._differences(old, manifest)
                raise StoreMismatchError(
                    f"'{path}' already holds a cache made for something else ({diff}); "
                    "pass --overwrite to replace it or choose another --out"
                )
            cls._remove(path, old)
        elif path.is_dir() and any(path.iterdir()):
            ours = {f"{k}.npy" for k in fields} | {SHARDS}
            strangers = [p.name for p in path.iterdir() if p.name not in ours and not p.name.startswith(".")]
            if strangers:
                raise FileExistsError(
                    f"'{path}' is not empty ({strangers[0]}, ...) and holds no repflow cache; choose a new directory"
                )
            shutil.rmtree(path / SHARDS, ignore_errors=True)  # markers of a store whose manifest never landed
        path.mkdir(parents=True, exist_ok=True)
        (path / SHARDS).mkdir(exist_ok=True)
        rows = int(count) * (2 if flips else 1)
        for name, f in fields.items():
            # open_memmap writes the .npy header and extends the file sparsely: no data is written here
            arr = np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=f.dtype, shape=(rows, *f.shape))
            del arr
        _atomic_write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    @staticmethod
    def _remove(path: Path, manifest: dict) -> None:
        for name in manifest.get("fields", {}):
            (path / f"{name}.npy").unlink(missing_ok=True)
        shutil.rmtree(path / SHARDS, ignore_errors=True)
        (path / MANIFEST).unlink(missing_ok=True)

    # -- opening --------------------------------------------------------------------------------------------
    @staticmethod
    def _read_manifest(path: Path) -> dict:
        f = path / MANIFEST
        if not f.is_file():
            raise FileNotFoundError(f"no cache at '{path}' (missing {MANIFEST})")
        try:
            manifest = json.loads(f.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"'{f}' is not valid JSON ({err}); delete the cache and rebuild it") from err
        if manifest.get("format") != FORMAT:
            raise ValueError(f"'{f}' is not a repflow array store manifest")
        if manifest.get("version") != VERSION:
            raise ValueError(f"'{f}' has store version {manifest.get('version')}; this repflow reads {VERSION}")
        return manifest

    @classmethod
    def open(
        cls,
        path: str | Path,
        expect: Mapping[str, Any] | None = None,
        need_flips: bool = False,
        hint: str = "",
        complete: bool = True,
    ) -> ArrayStore:
        """Open a store for reading, refusing it (one line, ``hint`` appended) if its meta differs from
        ``expect``, if flipped copies are needed but absent, or (``complete``) if shards are missing."""
        path = Path(path)
        suffix = f"; {hint}" if hint else ""
        if not path.exists():
            raise FileNotFoundError(f"cache '{path}' does not exist{suffix}")
        store = cls(path, cls._read_manifest(path))
        kind = store.meta.get("kind", "array")
        if expect:
            want, have = _flatten(_canonical(dict(expect))), _flatten(store.meta)
            diffs = [f"{k}={have.get(k, '<missing>')!r} (this run: {v!r})" for k, v in want.items() if have.get(k) != v]
            if diffs:
                raise StoreMismatchError(
                    f"the {kind} cache '{path}' does not match this run: it has {', '.join(diffs)}{suffix}"
                )
        if need_flips and not store.flips:
            raise StoreMismatchError(
                f"the {kind} cache '{path}' has no flipped copies but data.hflip=true; rebuild it with --flip "
                "or set data.hflip=false"
            )
        for name, f in store.fields.items():
            store._check_file(name, f)
        if complete:
            missing = store.pending_shards()
            if missing:
                raise StoreMismatchError(
                    f"the {kind} cache '{path}' is incomplete: {len(missing)} of {store.num_shards} shards missing "
                    f"(first: {missing[0]}); run the same cache command again to finish it"
                )
        return store

    def _check_file(self, name: str, f: Field) -> None:
        file = self.path / f"{name}.npy"
        if not file.is_file():
            raise FileNotFoundError(f"cache '{self.path}' lacks {file.name}; rebuild it")
        arr = np.load(file, mmap_mode="r")
        if arr.shape != (self.count * self.copies, *f.shape) or arr.dtype != np.dtype(f.dtype):
            raise ValueError(f"'{file}' holds {arr.shape} {arr.dtype}, the manifest says {_shape_str(f)}; rebuild it")

    @staticmethod
    def _differences(old: dict, new: dict) -> str:
        a = _flatten({k: old.get(k) for k in ("count", "flips", "fields", "meta")})
        b = _flatten({k: new[k] for k in ("count", "flips", "fields", "meta")})
        keys = [k for k in dict.fromkeys([*b, *a]) if a.get(k) != b.get(k)]
        return ", ".join(f"{k}: {a.get(k, '<missing>')!r} vs {b.get(k, '<missing>')!r}" for k in keys[:3])

    # -- shards ---------------------------------------------------------------------------------------------
    def shard_items(self, k: int) -> range:
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.count))

    def _marker(self, k: int) -> Path:
        return self.path / SHARDS / f"{k:06d}.done"

    def done_shards(self) -> set[int]:
        root = self.path / SHARDS
        if not root.is_dir():
            return set()
        return {int(p.name[:6]) for p in root.glob("*.done") if p.name[:6].isdigit()}

    def pending_shards(self) -> list[int]:
        done = self.done_shards()
        return [k for k in range(self.num_shards) if k not in done]

    def records(self) -> list[dict]:
        """The markers of finished shards (what each shard reported: bad files, time)."""
        out = []
        for k in sorted(self.done_shards()):
            out.append(json.loads(self._marker(k).read_text()))
        return out

    def write_items(self, start: int, arrays: Mapping[str, Tensor | np.ndarray]) -> None:
        """Write the rows of consecutive items from ``start`` (all copies: ``len = n_items * copies``)."""
        for name, f in self.fields.items():
            if name not in arrays:
                raise KeyError(f"no values for field '{name}'")
            value = arrays[name]
            if isinstance(value, Tensor):
                value = value.detach().cpu().numpy()
            value = np.ascontiguousarray(value, dtype=f.dtype)
            if value.shape[1:] != f.shape or value.shape[0] % self.copies:
                raise ValueError(f"field '{name}' expects (n * {self.copies}, {f.shape}), got {value.shape}")
            row0 = start * self.copies
            if row0 < 0 or row0 + value.shape[0] > self.count * self.copies:
                raise IndexError(f"rows {row0}..{row0 + value.shape[0]} outside the store ({self.count} items)")
            if not value.size:
                continue
            file = self.path / f"{name}.npy"
            offset = int(self.array(name).offset) + row0 * value[0].nbytes  # past the .npy header
            fd = os.open(file, os.O_WRONLY)
            try:
                view, done = memoryview(value.reshape(-1).view(np.uint8)), 0
                while done < len(view):  # pwrite may write less than asked
                    done += os.pwrite(fd, view[done:], offset + done)
            finally:
                os.close(fd)

    def mark_done(self, k: int, record: Mapping[str, Any] | None = None) -> None:
        """Flush this shard's rows to disk, then record it as finished (atomically)."""
        for name in self.fields:
            fd = os.open(self.path / f"{name}.npy", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        items = self.shard_items(k)
        _atomic_write_json(self._marker(k), {"shard": k, "items": [items.start, items.stop], **(record or {})})

    # -- reading --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.count

    def array(self, name: str) -> np.ndarray:
        """The read-only memory map of one field, shape (count * copies, *shape)."""
        if name not in self._maps:
            self._maps[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self._maps[name]

    def rows(self, indices: Sequence[int] | Tensor, flips: Sequence[bool] | Tensor | None = None) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise IndexError(f"index out of range for a cache of {self.count} items")
        flip = np.zeros_like(idx) if flips is None else np.asarray(flips, dtype=np.int64)
        if flip.any() and not self.flips:
            raise ValueError(f"cache '{self.path}' holds no flipped copies")
        return idx * self.copies + flip

    def read(
        self, indices: Sequence[int] | Tensor, flips: Sequence[bool] | Tensor | None = None, names=None
    ) -> dict[str, Tensor]:
        """Items ``(indices[i], flips[i])`` of every field (or of ``names``) as CPU tensors (B, *shape)."""
        rows = self.rows(indices, flips)
        order = np.argsort(rows, kind="stable")  # ascending rows: the disk sees forward reads
        # In a DataLoader worker the batch is built in shared memory: sending it to the main process then moves
        # no bytes (otherwise torch copies every tensor into shared memory once more; 100 MB per batch of
        # REPA features).
        shared = torch.utils.data.get_worker_info() is not None
        out = {}
        for name in names or self.fields:
            f, src = self.fields[name], self.array(name)
            result = torch.empty((len(rows), *f.shape), dtype=_TORCH_DTYPES[np.dtype(f.dtype).name])
            if shared:
                result.share_memory_()
            dst = result.numpy()
            for i in order:  # one copy per row, straight from the page cache into the batch
                dst[i] = src[rows[i]]
            out[name] = result
        return out

    def __getstate__(self) -> dict:  # memory maps are reopened in the receiving process, never pickled
        return {"path": self.path, "manifest": self.manifest}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["manifest"])


__all__ = ["SOURCE", "ArrayStore", "Field", "StoreMismatchError"]

"""Datasets as users have them: ImageNet class folders, flat folders, file lists, and broken or odd files."""

import io
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from repflow.config import DataConfig
from repflow.data import ImageFolderDataset, build_dataset, build_loader, read_file_list, synthetic_images
from repflow.data import loader as loader_mod
from repflow.data.cached import CachedDataset
from repflow.data.loader import ResumableBatchSampler, default_workers


def png_rgb16(path, rgb: tuple[int, int, int], size: int = 8) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    px = struct.pack(">HHH", *rgb) * size
    raw = b"".join(b"\x00" + px for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def bad_image_corpus(root):
    """Sorted names fix the order: three unreadable files, four odd-but-valid ones."""
    root.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "a_truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "b_zero.png").write_bytes(b"")
    Image.new("CMYK", (20, 12), (0, 255, 255, 0)).save(root / "c_cmyk.jpg", quality=100)  # red
    Image.fromarray(np.full((12, 12), 65535 // 2, dtype=np.uint16)).save(root / "d_grey16.png")  # mid grey
    Image.fromarray(np.full((12, 12), 200, dtype=np.uint16)).save(root / "d_grey16_dark.png")  # 200 of 65535
    Image.new("RGBA", (12, 12), (255, 0, 0, 0)).save(root / "e_rgba.png")  # transparent -> white
    (root / "f_text.jpg").write_text("this is not a JPEG")
    png_rgb16(root / "g_rgb16.png", (65535, 0, 32768))
    Image.new("RGB", (4, 3), (0, 0, 255)).save(root / "h_tiny.png")  # smaller than the target: ADM upsamples
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden junk is not even listed
    (root / "._i_fork.jpg").write_bytes(b"\0\5\x16\7")  # a macOS resource fork
    return [str(root / n) for n in ("a_truncated.png", "b_zero.png", "f_text.jpg")]


def test_bad_image_corpus_is_converted_or_skipped_and_reported(tmp_path):
    bad = bad_image_corpus(tmp_path / "imgs")
    ds = ImageFolderDataset(tmp_path / "imgs", resolution=16)
    assert len(ds) == 9 and ds.num_classes == 0  # flat folder: unconditional, hidden files ignored
    batch = ds.get_batch([(i, False) for i in range(9)])
    assert batch.bad_files == bad  # each reported once, in order
    assert batch.indices.tolist() == [2, 2, 2, 3, 4, 5, 7, 7, 8]  # replaced by the next readable image
    assert batch.images.shape == (9, 3, 16, 16) and batch.images.dtype == torch.uint8
    px = {
        name: batch.images[i, :, 8, 8].tolist()
        for i, name in [(2, "cmyk"), (3, "grey16"), (4, "dark16"), (5, "rgba"), (7, "rgb16")]
    }
    assert px["cmyk"][0] > 240 and px["cmyk"][1] < 15 and px["cmyk"][2] < 15
    assert px["grey16"] == [127, 127, 127]  # 32767 / 65535: scaled to 8 bits, not clipped to white
    assert px["dark16"] == [1, 1, 1]  # a dark 16-bit image stays dark (not read as 8-bit 200)
    assert px["rgba"] == [255, 255, 255]
    assert px["rgb16"] == [255, 0, 128]
    assert batch.images[8, :, 8, 8].tolist() == [0, 0, 255]
    # reports travel from DataLoader worker processes with the batch
    loader = iter(build_loader(ds, ResumableBatchSampler(len(ds), 9, seed=0), workers=1))
    assert sorted(next(loader).bad_files) == sorted(bad)


def test_imagenet_layout_labels_follow_sorted_class_folders(tmp_path):
    names = [f"n{k:08d}" for k in range(1000)]
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    img = io.BytesIO()
    Image.new("RGB", (3, 3)).save(img, "PNG")
    for name in shuffled:  # created in a random order: labels must not depend on it
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}_1.png").write_bytes(img.getvalue())
    (tmp_path / names[5] / "nested").mkdir()  # images in sub-folders belong to the class
    (tmp_path / names[5] / "nested" / "x.JPEG").write_bytes(img.getvalue())
    (tmp_path / "README.txt").write_text("not an image, not a class")
    ds = ImageFolderDataset(tmp_path, resolution=8)
    assert ds.num_classes == 1000 and ds.class_names == tuple(names) and len(ds) == 1001
    for f, k in zip(ds.files, ds.labels.tolist(), strict=True):
        assert f.relative_to(tmp_path).parts[0] == names[k]
    assert ds.labels.tolist() == sorted(ds.labels.tolist())


def test_file_lists_with_and_without_labels(tmp_path):
    for name in ("a.png", "b c.png", "d.png"):
        Image.new("RGB", (8, 8), (len(name), 0, 0)).save(tmp_path / name)
    (tmp_path / "labelled.txt").write_text(f"# ImageNet list format\na.png 3\nb c.png 0\n\n{tmp_path / 'd.png'}\t1\n")
    files, labels = read_file_list(tmp_path / "labelled.txt")
    assert files == [tmp_path / "a.png", tmp_path / "b c.png", tmp_path / "d.png"] and labels == [3, 0, 1]
    ds = build_dataset(DataConfig(dataset="file_list", root=str(tmp_path / "labelled.txt"), resolution=8))
    assert ds.num_classes == 4 and ds.labels.tolist() == [3, 0, 1]
    assert ds.get_batch([(1, False)]).images.shape == (1, 3, 8, 8)
    (tmp_path / "plain.txt").write_text("a.png\nb c.png\n")
    plain = build_dataset(DataConfig(dataset="file_list", root=str(tmp_path / "plain.txt"), resolution=8))
    assert len(plain) == 2 and plain.num_classes == 0
    (tmp_path / "mixed.txt").write_text("a.png 1\nd.png\n")
    with pytest.raises(ValueError, match=r"mixed.txt:2: either every line has a label or none"):
        read_file_list(tmp_path / "mixed.txt")
    (tmp_path / "names.txt").write_text("a.png cat\n")
    with pytest.raises(ValueError, match=r"names.txt:1: labels must be integers, got 'cat'"):
        read_file_list(tmp_path / "names.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(FileNotFoundError, match="lists no images"):
        read_file_list(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="file list .* does not exist"):
        build_dataset(DataConfig(dataset="file_list", root=str(tmp_path / "none.txt")))
    with pytest.raises(ValueError, match="data.dataset=file_list needs data.root=/path/to/list.txt"):
        build_dataset(DataConfig(dataset="file_list"))


def test_loader_defaults_workers_pinning_persistence(tmp_path, monkeypatch):
    tensors = synthetic_images(8, 8, 3, 2)
    assert default_workers(tensors) == 0  # in memory: vectorised indexing, no IPC
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    folder = ImageFolderDataset(tmp_path, 8)
    monkeypatch.setattr(loader_mod, "cpu_count", lambda: 64)
    assert default_workers(folder) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")  # 16 ranks on a 64-core node share the cores
    assert default_workers(folder) == 4
    monkeypatch.setattr(loader_mod, "cpu_count", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_workers(folder) == 2
    assert default_workers(CachedDataset(tensors, {})) == 0  # 2 CPUs: main-process reads beat IPC
    monkeypatch.setattr(loader_mod, "cpu_count", lambda: 16)
    assert default_workers(CachedDataset(tensors, {})) == 2  # a server: two workers read while the GPU works
    monkeypatch.setattr(loader_mod, "cpu_count", lambda: 2)
    dl = build_loader(folder, ResumableBatchSampler(1, 1, seed=0), workers=-1)
    assert dl.num_workers == 2 and dl.persistent_workers and dl.prefetch_factor == 4
    assert dl.pin_memory == torch.cuda.is_available()
    assert build_loader(tensors, ResumableBatchSampler(8, 4, seed=0)).num_workers == 0


def test_cache_driver_records_unreadable_files_and_their_substitutes(tmp_path):
    from repflow.data import Field
    from repflow.data.encode import encode_dataset

    bad = bad_image_corpus(tmp_path / "imgs")
    ds = ImageFolderDataset(tmp_path / "imgs", resolution=16)
    encode = lambda images: {"mean": images.float().mean((1, 2, 3))}  # noqa: E731
    kw = dict(batch_size=4, shard_size=3, workers=1, progress=False)
    report = encode_dataset(ds, tmp_path / "c", {"mean": Field((), "float32")}, encode, {"kind": "x"}, **kw)
    assert report.bad_files == bad  # each once, from worker processes, gathered over the shards' markers
    assert report.store.read(range(9))["source"].tolist() == [2, 2, 2, 3, 4, 5, 7, 7, 8]


def test_dataset_fingerprints_follow_content_not_location(tmp_path):
    colour = tmp_path / "a"
    for k in range(2):
        (colour / f"c{k}").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(colour / f"c{k}" / "x.png")
    first = ImageFolderDataset(colour, 8).fingerprint()
    colour.rename(tmp_path / "moved")
    assert ImageFolderDataset(tmp_path / "moved", 8).fingerprint() == first  # a moved dataset keeps its cache
    Image.new("RGB", (4, 4)).save(tmp_path / "moved" / "c1" / "y.png")
    assert ImageFolderDataset(tmp_path / "moved", 8).fingerprint() != first
    data = synthetic_images(8, 8, 3, 2)
    same = synthetic_images(8, 8, 3, 2)
    assert data.fingerprint() == same.fingerprint()
    same.images[0, 0, 0, 0] ^= 1
    assert data.fingerprint() != same.fingerprint()

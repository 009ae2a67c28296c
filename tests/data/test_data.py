import gzip
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repflow.config import DataConfig
from repflow.data import ImageFolderDataset, ResumableBatchSampler, build_dataset
from repflow.data.offline import _ArrayUnpickler, _mnist_from_pickle, load_fashion_mnist, read_idx
from repflow.data.transforms import center_crop_arr, model_to_uint8, to_mode, uint8_to_model

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_sampler_is_a_pure_function_of_position_and_splits_over_ranks():
    full = ResumableBatchSampler(10, 4, seed=1, hflip=True)
    stream = [full.items(s, 0) for s in range(6)]  # 24 items: crosses two epoch boundaries
    flat = [i for b in stream for i, _ in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    # two ranks x two accumulation steps cut the same global batches
    parts = [ResumableBatchSampler(10, 4, seed=1, hflip=True, rank=r, world=2, accum=2) for r in range(2)]
    for s in range(6):
        merged = [it for a in range(2) for r in range(2) for it in parts[r].items(s, a)]
        assert merged == stream[s]
    # resuming at step 3 continues the same stream
    resumed = iter(ResumableBatchSampler(10, 4, seed=1, hflip=True, start_image=12))
    assert [next(resumed) for _ in range(3)] == stream[3:]
    with pytest.raises(ValueError, match="not divisible"):
        ResumableBatchSampler(10, 5, seed=0, world=2)


def test_uint8_round_trip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(model_to_uint8(uint8_to_model(x)), x)


def test_center_crop_handles_small_and_large_images():
    for size in [(7, 5), (300, 200), (64, 64)]:
        out = center_crop_arr(Image.new("RGB", size, (10, 20, 30)), 32)
        assert out.size == (32, 32)


def test_color_modes_are_normalised():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent -> white
    assert to_mode(rgba, 3).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert to_mode(sixteen, 3).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    assert to_mode(cmyk, 1).mode == "L"


def test_image_folder_classes_and_bad_files(tmp_path):
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (k * 100, i * 50, 0)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image at all")
    ds = ImageFolderDataset(tmp_path, resolution=16)
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2 and len(ds) == 7
    broken = ds.files.index(tmp_path / "dog" / "broken.png")
    batch = ds.get_batch([(broken, False), (0, True)])
    assert batch.images.shape == (2, 3, 16, 16) and batch.bad_files == [str(tmp_path / "dog" / "broken.png")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path / "empty", 16)


def test_small_folder_keeps_decoded_images_and_a_large_one_does_not(tmp_path, monkeypatch):
    import repflow.data.datasets as datasets

    for i in range(3):
        Image.new("RGB", (40, 30), (i * 100, 50, 0)).save(tmp_path / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, resolution=16)
    first = ds.get_batch([(0, False), (1, True), (2, False)]).images
    for f in ds.files:
        f.unlink()  # from now on only the kept images can answer
    again = ds.get_batch([(0, False), (1, True), (2, False)])
    assert torch.equal(again.images, first) and again.bad_files == []
    monkeypatch.setattr(datasets, "MEMO_BYTES", 3 * 16 * 16 * 3 - 1)  # one byte short of the three images
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 100, 50, 0)).save(tmp_path / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, resolution=16)
    ds.get_batch([(0, False)])
    ds.files[0].unlink()
    assert ds.get_batch([(0, False)]).bad_files == [str(ds.files[0])]  # read again: nothing was kept


def test_keep_all_decodes_a_small_folder_up_front(tmp_path):
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 100, 50, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"not an image")  # skipped now, reported when a batch meets it
    ds = ImageFolderDataset(tmp_path, resolution=16)
    ds.keep_all()  # what `repflow init` does before timing steps
    for f in ds.files[:3]:
        f.unlink()
    batch = ds.get_batch([(0, False), (1, False), (2, True)])
    assert batch.bad_files == [] and batch.images.shape == (3, 3, 16, 16)


def test_idx_reader_rejects_truncated_files(tmp_path):
    header = bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big")
    good = tmp_path / "good.idx"
    good.write_bytes(header + bytes(20))
    assert read_idx(good).shape == (5, 2, 2)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(header + bytes(7))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(bad)


def test_mnist_pickle_loader_is_restricted(tmp_path):
    x = (np.arange(2 * 784) % 256 / 256).astype(np.float32).reshape(2, 784)
    y = np.array([3, 4], dtype=np.int64)
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((x, y), (x, y), (x[:1], y[:1])))))
    images, labels = _mnist_from_pickle(path, "train")
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.uint8 and labels.tolist() == [3, 4, 3, 4]
    assert int(images[0, 0, 0, 5]) == 5  # k / 256 -> k exactly

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _ArrayUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST package not installed (make data)")
def test_fashion_mnist_offline():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 1, 28, 28) and labels.max() == 9
    ds = build_dataset(DataConfig(dataset="fashion_mnist", split="test", resolution=32, channels=3, subset=100))
    assert len(ds) == 100 and ds.num_classes == 10
    assert ds.get_batch([(0, False)]).images.shape == (1, 3, 32, 32)

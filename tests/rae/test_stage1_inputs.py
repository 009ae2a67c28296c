"""What RAE's stage 1 feeds its losses: LPIPS from the usual weight files, and the random crops of its data."""

import pytest
import torch
from PIL import Image

from repflow.config import ConfigError, load_config
from repflow.data.datasets import ImageFolderDataset
from repflow.data.loader import ResumableBatchSampler
from repflow.data.transforms import model_to_uint8, pil_to_uint8, random_crop_arr
from repflow.methods.lpips import VGG_LAYERS, load_lpips, lpips_for, save_lpips, vgg16_features
from repflow.train.loop import Trainer

from ..conftest import TINY


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random weights in the layouts of torchvision's ``vgg16-397923af.pth`` (``features.<i>``, ``classifier.<i>``)
    and of lpips' ``vgg.pth`` (``lin<k>.model.1.weight``, (1, C, 1, 1), non-negative)."""
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    vgg = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    vgg["classifier.6.bias"] = torch.zeros(1000)  # the rest of the classifier: present in the real file, unused
    torch.save(vgg, folder / "vgg16-397923af.pth")
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lin, folder / "vgg.pth")
    return folder / "vgg.pth", folder / "vgg16-397923af.pth", vgg, lin


def lpips_by_hand(vgg: dict, lin: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The lpips package's formula, written out with torchvision's VGG16."""
    features = vgg16_features()
    features.load_state_dict({k[len("features.") :]: v for k, v in vgg.items() if k.startswith("features.")})
    shift, scale = torch.tensor([-0.030, -0.088, -0.188]), torch.tensor([0.458, 0.448, 0.450])
    total = torch.zeros(len(x))
    shift, scale = shift.view(1, 3, 1, 1), scale.view(1, 3, 1, 1)
    fx, fy = (x - shift) / scale, (y - shift) / scale
    k = 0
    for i, layer in enumerate(features):
        fx, fy = layer(fx), layer(fy)
        if i in VGG_LAYERS:
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += ((nx - ny) ** 2 * lin[f"lin{k}.model.1.weight"]).sum(1).mean(dim=(1, 2))
            k += 1
    return total


def test_lpips_from_torchvision_vgg16_and_the_lpips_lin_layers(lpips_files, tmp_path, capsys):
    lin_file, vgg_file, vgg, lin = lpips_files
    lp = load_lpips(lin_file, vgg_file)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        got = lp(x, y)
        torch.testing.assert_close(got, lpips_by_hand(vgg, lin, x, y), rtol=1e-5, atol=1e-6)
        assert torch.equal(lp(x, x), torch.zeros(2)) and torch.equal(lp(x, y), lp(y, x))
        combined = load_lpips(save_lpips(vgg, lin, tmp_path / "lpips.safetensors"))  # one file: the same weights
        assert torch.equal(combined(x, y), got)
        torch.save({k.replace("model.1", "model.0"): v for k, v in lin.items()}, tmp_path / "nodropout.pth")
        assert torch.equal(load_lpips(tmp_path / "nodropout.pth", vgg_file)(x, y), got)  # lpips without dropout
    with pytest.raises(ValueError, match="name torchvision's VGG16 weights too .method.lpips_vgg="):
        load_lpips(lin_file)
    with pytest.raises(FileNotFoundError, match="'none.pth' do not exist: download torchvision's VGG16"):
        load_lpips(lin_file, "none.pth")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="are not LPIPS weights"):
        load_lpips(tmp_path / "other.pth", vgg_file)


def test_lpips_off_is_said_in_one_line_with_where_the_files_come_from(lpips_files, capsys):
    from repflow.methods.rae_decoder import RAEDecoderConfig

    assert lpips_for(RAEDecoderConfig(lpips_weight=0.0), "cpu") is None and capsys.readouterr().err == ""
    assert lpips_for(RAEDecoderConfig(), "cpu") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LPIPS is off: no weights given" in err
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in err and "lpips/weights/v0.1/vgg.pth" in err
    lin_file, vgg_file, _, _ = lpips_files
    assert lpips_for(RAEDecoderConfig(lpips=str(lin_file), lpips_vgg=str(vgg_file)), "cpu") is not None


def test_random_crop_is_torchvision_s_resize_then_crop():
    tv = pytest.importorskip("torchvision.transforms.functional")
    g = torch.Generator().manual_seed(0)
    for w, h in ((70, 50), (40, 90), (64, 64)):
        image = Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
        resized = tv.resize(image, 48, interpolation=tv.InterpolationMode.BICUBIC)  # short side 48, long truncated
        rw, rh = resized.size
        assert min(rw, rh) == 48 and max(rw, rh) == int(48 * max(w, h) / min(w, h))
        for u, v in ((0.0, 0.0), (0.5, 0.25), (0.9999, 0.9999)):
            top, left = int(u * (rh - 32 + 1)), int(v * (rw - 32 + 1))  # RandomCrop: randint(0, free + 1)
            want = pil_to_uint8(tv.crop(resized, top, left, 32, 32))
            assert torch.equal(pil_to_uint8(random_crop_arr(image, 32, 48, u, v)), want), (w, h, u, v)
        assert top == rh - 32 and left == rw - 32  # u -> 1 reaches the last offset


def test_random_crops_in_training_are_a_pure_function_of_seed_and_position(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        Image.fromarray(torch.randint(0, 256, (20, 28, 3), generator=g, dtype=torch.uint8).numpy()).save(
            folder / f"{i}.png"
        )
    plain = ResumableBatchSampler(4, 4, seed=3, hflip=True)
    crops = ResumableBatchSampler(4, 4, seed=3, hflip=True, crops=True)
    items = crops.items(1, 0)
    assert [i[:2] for i in items] == plain.items(1, 0) and items == crops.items(1, 0)  # the order and flips unchanged
    ds = ImageFolderDataset(folder, 8, crop_resize=12)
    batch = ds.get_batch(items)
    for img, (index, flip, (u, v)) in zip(batch.images, items, strict=True):
        with Image.open(ds.files[index]) as im:
            want = pil_to_uint8(random_crop_arr(im.convert("RGB"), 8, 12, u, v))
        assert torch.equal(img, want.flip(-1) if flip else want)
    corners = [ds.get_batch([(0, False, (u, u))]).images for u in (0.0, 0.99)]
    assert not torch.equal(*corners)
    centre = ds.get_batch([(0, False)]).images  # previews, statistics and evaluation: the centre crop
    assert torch.equal(centre, ImageFolderDataset(folder, 8).get_batch([(0, False)]).images)
    data = ["data.dataset=image_folder", f"data.root={folder}", "data.crop=random", "data.workers=0",
            "train.batch_size=4", "model.num_classes=0"]  # fmt: skip
    tr = Trainer(load_config(None, [*TINY, *data]), tmp_path / "run")
    assert tr.dataset.crop_resize == 12  # 1.5 x the 8 px resolution
    expected = ds.get_batch(ResumableBatchSampler(4, 4, seed=0, crops=True).items(0, 0)).images
    assert torch.equal(model_to_uint8(tr.next_batch(0).x), expected)  # the loop's first batch: those windows
    tr._release()


def test_random_crops_are_refused_where_they_cannot_work():
    with pytest.raises(ConfigError, match="random crops images from files"):
        load_config(None, ["data.crop=random"])  # Fashion-MNIST: tensors, not files
    with pytest.raises(ConfigError, match="'data.crop_resize' must be >= data.resolution=32"):
        load_config(None, ["data.dataset=image_folder", "data.crop=random", "data.crop_resize=16"])
    with pytest.raises(ConfigError, match="caches .* hold centre crops"):
        load_config(None, ["data.dataset=image_folder", "data.crop=random", "encoders=[{name: tiny, cache: /x}]"])

"""Bad files and command lines, generated here and run through the real CLI (issue 22): official files holding
NaN, the wrong shapes or another format, files that would need unpickling code, a run reused as --out, a
decoder that is not one, negative counts, overrides after --out. Each ends in one line and exit 2."""

import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from repflow.cli import main

from .conftest import TINY
from .test_bad_inputs import eval_folders, newest, one_line_error


class _RunsCode:
    """What an attacker would pickle: unpickling it calls os.system."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    """A tiny pixel-space SiT run (4 steps) and its official-sit export."""
    root = tmp_path_factory.mktemp("files")
    assert main(["train", "demo-fashion-sit", *TINY, "--out", str(root / "run")]) == 0
    assert main(["convert", "--to", "official-sit", str(root / "run"), "--out", str(root / "sit.pt")]) == 0
    return root / "run", root / "sit.pt"


def test_overrides_are_taken_after_out(capsys, tmp_path, pixel_run):
    assert main(["train", "demo-fashion-sit", "--dry-run", "--out", str(tmp_path / "r"), "train.lr=0.125"]) == 0
    assert "lr: 0.125" in capsys.readouterr().out
    _, sit = pixel_run
    out = tmp_path / "imported"
    assert main(["convert", "official-sit", str(sit), "--out", str(out), "sample.steps=7"]) == 0
    assert "steps: 7" in (out / "config.yaml").read_text()
    with pytest.raises(SystemExit) as stop:  # anything else unknown is still a usage error
        main(["train", "demo-fashion-sit", "--dry-run", "--out", str(tmp_path / "r"), "--bogus"])
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_pixel_space_official_sit_round_trip(pixel_run, tmp_path):
    """Exported to the official layout and imported back, a pixel-space run stays one (not an SD-VAE run at 8x
    the size) and every weight comes back exactly."""
    from repflow.config import from_yaml

    run, sit = pixel_run
    out = tmp_path / "back"
    assert main(["convert", "official-sit", str(sit), "--out", str(out)]) == 0
    cfg = from_yaml((out / "config.yaml").read_text())
    assert (cfg.codec.kind, cfg.data.resolution, cfg.data.channels) == ("pixel", 8, 3)
    ema = load_file(str(newest(run) / "ema-0.9.safetensors"))
    back = load_file(str(newest(out) / "ema-0.9999.safetensors"))
    assert set(ema) == set(back) and all(torch.equal(ema[k], back[k]) for k in ema)


def test_convert_refuses_a_used_out(capsys, pixel_run, tmp_path):
    run, sit = pixel_run
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    one_line_error(capsys, ["convert", "official-sit", str(sit), "--out", str(run)], "is not empty", "new or empty")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # no ckpt-00000000 beside them


def test_official_files_with_nan_or_wrong_shapes(capsys, pixel_run, tmp_path):
    _, sit = pixel_run
    sd = torch.load(sit, weights_only=True)
    cases = {
        "nan": ({**sd, "blocks.0.attn.qkv.weight": sd["blocks.0.attn.qkv.weight"] * float("nan")},
                "tensor blocks.0.attn.qkv.weight holds NaN or infinite values"),
        "inf-in-raw": ({"model": {**sd, "t_embedder.mlp.0.bias": sd["t_embedder.mlp.0.bias"] / 0}, "ema": sd},
                       "tensor model.t_embedder.mlp.0.bias holds NaN"),
        "pos-embed": ({**sd, "pos_embed": torch.zeros(1, 3, 32)}, "holds 3 image tokens, not a square grid"),
        "raw-shape": ({"model": {**sd, "blocks.1.mlp.fc2.weight": torch.zeros(32, 64)}, "ema": sd},
                      "blocks.1.mlp.fc2.weight has shape (32, 64)"),
    }  # fmt: skip
    for name, (obj, needle) in cases.items():
        f = tmp_path / f"{name}.pt"
        torch.save(obj, f)
        one_line_error(capsys, ["convert", "official-sit", str(f), "--out", str(tmp_path / name)], needle)
        assert not (tmp_path / name).exists()
    one_line_error(capsys, ["convert", "official-reg", str(sit), "--out", str(tmp_path / "reg")],
                   "not an official official-reg state dict: it has no projectors.0.0.weight: it looks like "
                   "official-sit")  # fmt: skip


def test_checkpoint_weights_with_nan_are_refused_on_load(capsys, pixel_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pixel_run[0], bad)
    f = newest(bad) / "ema-0.9.safetensors"
    weights = load_file(str(f))
    weights["x_embedder.bias"][0] = float("inf")
    save_file(weights, str(f))
    one_line_error(capsys, ["sample", str(bad), "--num-samples", "1"], "x_embedder.bias holds NaN or infinite")


def test_indexing_a_scalar_override(capsys):
    one_line_error(capsys, ["train", "demo-fashion-sit", "train.lr[0]=1", "--dry-run"],
                   "config key 'train.lr' holds 0.001, not a list")  # fmt: skip


def test_files_needing_unpickling_code_are_one_line(capsys, tmp_path, monkeypatch):
    from repflow._compat import require

    evil = tmp_path / "fc.pt"
    torch.save({"fc.weight": _RunsCode()}, evil)
    samples, ref = eval_folders(tmp_path, monkeypatch)
    one_line_error(capsys, ["eval", str(samples), "--ref", str(ref), "--metrics", "is", "--inception-fc", str(evil)],
                   "Inception classifier file", "needs code to be unpickled (posix.system) and is refused")  # fmt: skip
    # an MNIST pickle in the data folder
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "mnist.pkl.gz").write_bytes(__import__("gzip").compress(pickle.dumps(_RunsCode())))
    one_line_error(capsys, ["train", "demo-fashion-sit", "data.dataset=mnist", f"data.root={tmp_path}",
                            "--out", str(tmp_path / "m")], "MNIST data file", "needs code to be unpickled")  # fmt: skip
    # a transformers encoder folder whose weights are a pickle (pytorch_model.bin)
    transformers = require("transformers")
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8)  # fmt: skip
    folder = tmp_path / "clip"
    transformers.CLIPVisionModel(vision).save_pretrained(str(folder))
    (folder / "model.safetensors").unlink()
    torch.save({"x": _RunsCode()}, folder / "pytorch_model.bin")
    encoder = f"encoders=[{{name: clip-vitb16, path: {folder}, resolution: 32}}]"
    argv = ["train", "demo-fashion-sit", *TINY, "repa.enabled=true", encoder, "--out", str(tmp_path / "c")]
    one_line_error(capsys, argv, "encoder folder", "needs code to be unpickled")


def test_decoder_that_is_not_a_decoder_is_refused_at_start_up(capsys, pixel_run, tmp_path):
    argv = ["train", "demo-fashion-sit", *TINY, "data.resolution=16", "codec.kind=rae", "codec.decoder_patch=4",
            "codec.encoder=tiny", f"codec.decoder={pixel_run[0]}", "--out", str(tmp_path / "r")]  # fmt: skip
    one_line_error(capsys, argv, "is a flow run, not a rae_decoder run")


@pytest.mark.parametrize(
    "argv",
    [
        ["rae", "stats", "demo-fashion-sit", "--num", "-5", "--out", "x.safetensors"],
        ["sample", "RUN", "--num-samples", "-3"],
        ["eval", "RUN", "--num-samples", "-1"],
        ["sweep", "RUN", "--cfg", "1", "--steps", "4,-2"],
        ["cache", "latents", "demo-fashion-sit", "--out", "x", "--batch-size", "-8"],
    ],
)
def test_negative_counts_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and (">= 0, got -" in err[0] or "whole numbers >= 0" in err[0])


def test_ctrl_c_while_sampling_says_what_is_kept(capsys, monkeypatch, pixel_run):
    import repflow.sample.runs as runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "sample_run", interrupted)
    assert main(["sample", str(pixel_run[0]), "--num-samples", "2"]) == 130
    err = capsys.readouterr().err
    assert "images already written are kept" in err and "checkpoint" not in err


def test_exif_orientation_is_applied(tmp_path):
    import numpy as np
    from PIL import Image

    from repflow.data import ImageFolderDataset

    pixels = np.zeros((8, 16, 3), np.uint8)  # 16 wide, 8 tall, top row white
    pixels[0] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    (tmp_path / "a").mkdir()
    image.save(tmp_path / "a" / "0.png", exif=exif)
    loaded = ImageFolderDataset(tmp_path, 8, channels=3).load(0)  # centre crop of the upright 8 x 16 image
    assert loaded.shape == (3, 8, 8)
    assert (loaded[:, :, -1] > 200).all() and (loaded[:, :, 0] < 50).all()  # the top row became the right column


def test_ckpt_every_zero_checkpoints_only_at_the_end(tmp_path):
    out = tmp_path / "r"
    assert main(["train", "demo-fashion-sit", *TINY, "train.ckpt_every=0", "train.steps=3", "--out", str(out)]) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["ckpt-00000003"]


def test_progress_bar_shows_each_steps_loss(tmp_path):
    from repflow.train.logging import RunLogger

    logger = RunLogger(tmp_path, total_steps=3, start_step=0)
    logger.bar.mininterval = 0.0
    for loss in (0.5, 0.25):
        logger.step(loss=torch.tensor(loss))
        assert logger.bar.postfix == f"loss={loss:.4f}"
    logger.close()

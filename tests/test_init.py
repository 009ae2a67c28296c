"""``repflow init FOLDER`` and presets pointed at one's own folder (issue 22): the channels, resolution and patch
size come from the images, the token rule holds, the config trains, and every choice is said."""

import time

import numpy as np
import pytest
import yaml
from PIL import Image

from repflow.cli import main
from repflow.config import load_config
from repflow.init import arch_name, choose_patch, choose_size, survey


def write_folder(root, classes=("Circle", "Square", "Ankle boot"), n=4, size=(48, 48), grey=False):
    g = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0]) if grey else (size[1], size[0], 3)
            Image.fromarray(g.integers(0, 255, shape, dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "side,channels,max_values,max_tokens,expected",
    [
        (48, 3, 48, 256, (48, 4)),  # 4x4x3 = 48 values, 144 tokens
        (48, 3, 48, 64, (32, 4)),  # a CPU: at most 8x8 tokens
        (28, 1, 48, 64, (24, 6)),  # 6x6x1 = 36 values; 28 is not a usual size: 24
        (256, 3, 768, 256, (256, 16)),  # JiT: 16x16x3 = 768 values
        (10, 3, 48, 64, (16, 4)),  # smaller than every usual size: the smallest
    ],
)
def test_size_and_patch_rules(side, channels, max_values, max_tokens, expected):
    resolution, patch = choose_size(side, channels, max_values, max_tokens)
    assert (resolution, patch) == expected
    assert patch * patch * channels <= max_values and (resolution // patch) ** 2 <= max(max_tokens, 16)
    assert choose_patch(32, 3, 48) == 4 and choose_patch(32, 1, 48) == 4 and choose_patch(48, 1, 48) == 6


def test_arch_name_is_the_tiny_size_with_the_nearest_patch():
    # the named size only fills depth/width; model.patch_size decides, but the name should not contradict it
    assert [arch_name("jit", p) for p in (2, 6, 8, 12, 16)] == ["JiT-T/2", "JiT-T/4", "JiT-T/8", "JiT-T/8", "JiT-T/16"]
    assert arch_name("reg", 4) == "SiT-T/4" and arch_name("dsd", 24) == "DSD-T/16"


def test_survey_reads_classes_count_channels_and_sizes(tmp_path):
    s = survey(write_folder(tmp_path / "rgb", size=(64, 48)))
    assert s.classes == ("Ankle boot", "Circle", "Square") and s.count == 12 and s.channels == 3 and s.side == 48
    assert s.sizes == ((64, 48),)
    assert survey(write_folder(tmp_path / "grey", grey=True)).channels == 1
    grey_rgb = tmp_path / "grey-rgb" / "a"  # RGB files holding grey pixels
    grey_rgb.mkdir(parents=True)
    Image.fromarray(np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)).save(grey_rgb / "0.png")
    assert survey(tmp_path / "grey-rgb").channels == 1


def test_init_writes_a_commented_config_that_trains(tmp_path, capsys, monkeypatch):
    import repflow.init as init

    monkeypatch.setattr(init, "time_step", lambda s, p: 0.5)  # timing is measured in the next test
    folder = write_folder(tmp_path / "shapes")
    out = tmp_path / "shapes.yaml"
    assert main(["init", str(folder), "--out", str(out), "--device", "cpu", "--minutes", "10", "--method", "reg"]) == 0
    text = out.read_text()
    assert "4x4x3 = 48 values a token" in text and "3 classes (Ankle boot, Circle, Square)" in text
    data = yaml.safe_load(text)
    assert data["inherit"] == "demo-fashion-reg" and data["data"]["root"] == str(folder.resolve())
    assert data["train"]["steps"] == 1000 and data["data"]["channels"] == 3  # 85% of 10 min at 0.5 s a step
    cfg = load_config(str(out), ["train.steps=2", "train.batch_size=4", "model.depth=1", "model.hidden_size=64",
                                 "model.num_heads=2", "train.sample_num=2", "sample.steps=2"])  # fmt: skip
    assert (cfg.data.resolution, cfg.model.patch_size, cfg.encoders[0].resolution) == (32, 4, 32)
    assert (
        main(
            [
                "train",
                str(out),
                "train.steps=2",
                "train.batch_size=4",
                "model.depth=1",
                "model.hidden_size=64",
                "model.num_heads=2",
                "train.sample_num=2",
                "sample.steps=2",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "model SiT-T/4 (1 blocks x 64, 32x32x3 input)" in said and "3 classes, 32 px, 3 channel(s)" in said
    assert main(["init", str(folder), "--out", str(out)]) == 2  # never replaces a file
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "device,preset,shape",
    [
        ("cpu", "demo-fashion-jit", (32, 8)),  # x-prediction, 16 tokens of 8x8x3 = 192 values (README: shapes)
        ("cuda", "demo-fashion-reg", (48, 4)),  # REG, 12x12 tokens of 4x4x3 = 48 values
    ],
)
def test_init_auto_picks_jit_on_a_cpu_and_reg_on_a_gpu(tmp_path, monkeypatch, device, preset, shape):
    import repflow.init as init

    monkeypatch.setattr(init, "time_step", lambda s, p: 0.2)
    out = tmp_path / "auto.yaml"
    assert main(["init", str(write_folder(tmp_path / "f")), "--out", str(out), "--device", device]) == 0
    data = yaml.safe_load(out.read_text())
    assert data["inherit"] == preset and (data["data"]["resolution"], data["model"]["patch_size"]) == shape
    assert "--method auto" in out.read_text().splitlines()[0]
    # a CPU's JiT: batches of 64 at twice the recipe's lr (README: shapes); a GPU's REG keeps its recipe's lr
    assert (data["train"]["batch_size"], data["train"].get("lr")) == ((64, 2e-3) if device == "cpu" else (256, None))
    assert load_config(str(out)).train.lr == (2e-3 if device == "cpu" else 1e-3)


def test_init_times_a_real_step(tmp_path, monkeypatch):
    from repflow.init import Plan, time_step
    from repflow.train.loop import Trainer

    s = survey(write_folder(tmp_path / "f", n=2, size=(16, 16)))
    p = Plan("sit", "demo-fashion-sit", 16, 4, 0, 4, 0, 0.0, 1, "cpu", 1.0)
    steps, step = [], Trainer.train_step

    def slow_step(self):  # >= 50 ms a step: a 0.3 s window takes 2 to 7 after the warm-up, more than repeats=1
        steps.append(time.sleep(0.05))
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", slow_step)
    seconds = time_step(s, p, repeats=1, min_seconds=0.3)
    assert 0.05 < seconds < 30 and 3 <= len(steps) <= 8
    steps.clear()
    assert time_step(s, p, repeats=3, min_seconds=0) > 0.05 and len(steps) == 4  # the warm-up and 3


def test_a_preset_on_a_folder_takes_its_shapes_from_the_images(tmp_path, capsys):
    folder = write_folder(tmp_path / "rgb")
    base = ["data.dataset=image_folder", f"data.root={folder}"]
    assert main(["train", "demo-fashion-reg", *base, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("repflow: data.channels=3, model.patch_size=4 taken from the images in")
    dumped = yaml.safe_load(out.split("\n", 1)[1])
    assert dumped["data"]["channels"] == 3 and dumped["model"]["patch_size"] == 4
    assert main(["train", "demo-fashion-reg", *base, "data.channels=1", "data.resolution=32", "model.arch=SiT-T/8",
                 "--dry-run"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert not out.startswith("repflow:") and "channels: 1" in out  # what the user set stays


@pytest.mark.parametrize(
    "argv,kept",
    [
        (["sit-b2-reg-in256"], ("resolution: 256", "patch_size: 2")),  # an ImageNet preset: the recipe stays
        (["jit-b16-in256"], ("resolution: 256", "patch_size: 16")),
        (["demo-fashion-rae-ditdh", "data.dataset=image_folder"], ("resolution: 32", "patch_size: 1")),  # latents
    ],
)
def test_presets_for_a_folder_or_a_latent_space_keep_their_shapes(tmp_path, capsys, argv, kept):
    folder = write_folder(tmp_path / "big", size=(400, 300), n=1)
    assert main(["train", *argv, f"data.root={folder}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not out.startswith("repflow:") and all(k in out for k in kept)


def test_init_rae_writes_both_stages_that_train_in_order(tmp_path, capsys, monkeypatch):
    """--method rae: stage 1 (the decoder) and stage 2 (DiT^DH) configs at the same size and decoder patch, the
    second naming the first's run and the statistics file that `repflow rae stats` writes from it."""
    import repflow.init as init

    monkeypatch.setattr(init, "time_step", lambda s, p, stage="": 0.5 if stage else 0.25)
    folder = write_folder(tmp_path / "shapes", n=2)
    monkeypatch.chdir(tmp_path)
    assert main(["init", str(folder), "--method", "rae", "--device", "cpu", "--minutes", "10"]) == 0
    said = capsys.readouterr().out
    assert "next: repflow train shapes-decoder.yaml --out runs/shapes-decoder" in said
    stage2, stage1 = (yaml.safe_load((tmp_path / f).read_text()) for f in ("shapes.yaml", "shapes-decoder.yaml"))
    assert stage1["inherit"] == "demo-fashion-rae-decoder" and stage2["inherit"] == "demo-fashion-rae-ditdh"
    # 48 px on a CPU: patches of 6 give the largest latent of at most 8 x 8 tokens; the tiny encoder sees 32 px
    for cfg in (stage1, stage2):
        assert (cfg["data"]["resolution"], cfg["data"]["channels"], cfg["codec"]["decoder_patch"]) == (48, 3, 6)
    assert stage1["train"]["steps"] == 500 and stage2["train"]["steps"] == 1000  # 85% of 5 min each at 0.5 / 0.25 s
    assert (stage1["method"]["disc_start"], stage1["method"]["gan_start"]) == (250, 333)
    assert (
        stage2["codec"]["decoder"] == "runs/shapes-decoder" and stage2["codec"]["stats"] == "shapes-stats.safetensors"
    )
    assert main(["init", str(folder), "--method", "rae"]) == 2  # never replaces either file
    for config in ("shapes-decoder.yaml", "shapes.yaml"):  # both resolve (stage 1 is the tested demo decoder)
        assert main(["train", config, "--dry-run"]) == 0
    tiny = ["data.resolution=16", "codec.decoder_patch=2", "data.workers=0"]  # 8 x 8 latent tokens, small images
    assert main(["rae", "stats", "shapes.yaml", *tiny, "--num", "4", "--batch-size", "2", "--out",
                 "shapes-stats.safetensors"]) == 0  # fmt: skip
    small = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "model.head_width=192",
             "model.head_heads=2", "model.head_depth=1", "train.steps=1", "train.batch_size=2", "train.sample_num=0",
             "codec.decoder="]  # fmt: skip
    assert main(["train", "shapes.yaml", *tiny, *small, "--out", "runs/shapes"]) == 0  # stage 2 on the statistics


def test_rae_latent_size_rule():
    from repflow.init import choose_latent_size

    assert choose_latent_size(48, 64) == (48, 6)  # 8 x 8 latent tokens
    assert choose_latent_size(256, 256) == (256, 16)  # RAE's 16 x 16 at 256 px on a GPU
    assert choose_latent_size(28, 64) == (24, 3)


def write_flat_folder(root, n=6, size=(24, 24)):
    root.mkdir(parents=True)
    g = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(g.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


TINY_JIT = ["train.steps=2", "train.batch_size=4", "model.depth=3", "model.hidden_size=32", "model.num_heads=2",
            "train.sample_num=2", "sample.steps=2", "train.ckpt_every=2"]  # fmt: skip


def test_a_flat_folder_trains_and_samples_without_guidance(tmp_path, capsys, monkeypatch):
    """No class folders: init writes sample.cfg 1 (the recipes guide with labels: the run's closing samples
    failed after training), a preset pointed at the folder takes it and says so, and a config that still asks
    for guidance is refused before the first step, in one line."""
    import repflow.init as init

    monkeypatch.setattr(init, "time_step", lambda s, p, stage="": 0.5)
    folder = write_flat_folder(tmp_path / "flat")
    out = tmp_path / "flat.yaml"
    assert main(["init", str(folder), "--out", str(out), "--method", "jit", "--device", "cpu"]) == 0
    assert yaml.safe_load(out.read_text())["sample"]["cfg"] == 1
    run = tmp_path / "run"
    assert main(["train", str(out), *TINY_JIT, "--out", str(run)]) == 0  # closing samples included
    assert main(["sample", str(run), "--num-samples", "2", "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--num-samples", "2", "--steps", "2", "--cfg", "2"]) == 2
    err = capsys.readouterr().err
    assert "(cfg 2) needs a class-conditional model and labels, and this model has no classes" in err

    base = ["demo-fashion-jit", "data.dataset=image_folder", f"data.root={folder}"]
    assert main(["train", *base, "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("repflow: ") and "sample.cfg=1.0" in said.splitlines()[0]
    refused = tmp_path / "refused"
    assert main(["train", *base, *TINY_JIT, "sample.cfg=2", "--out", str(refused)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("needs classes, and this data has no class folders (an unconditional model): set sample.cfg=1")
    assert "\n" not in err and not list(refused.glob("checkpoints/ckpt-*"))
    from repflow.build import check_guidance_has_classes

    unconditional = ["model.num_classes=0", "sample.cfg=2"]
    check_guidance_has_classes(load_config("demo-fashion-jit", [*unconditional, f"sample.guide={run}"]))  # AutoGuidance
    check_guidance_has_classes(load_config("demo-fashion-jit", ["model.num_classes=10", "sample.cfg=2"]))
    with pytest.raises(ValueError, match="set sample.cfg=1"):
        check_guidance_has_classes(load_config("demo-fashion-jit", unconditional))

"""A corpus of bad inputs, generated at test time and run through the real CLI: each must end in one line on
stderr (exit 2) or in a reported skip, never a traceback, a silent wrong result or lost data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from repflow.cli import main

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, argv, *needles) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (argv, err)
    last = err[-1]
    assert last.startswith("repflow: error:"), err
    for needle in needles:
        assert needle in last, (needle, last)
    return last


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run (4 steps) that the cases below damage copies of."""
    out = tmp_path_factory.mktemp("bad") / "run"
    assert main(["train", "demo-fashion-sit", *TINY, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.class_dropout=1.5", "'model.class_dropout' must lie in [0, 1), got 1.5"),
        ("data.subset=-3", "'data.subset' must be >= 0"),
        ("train.sample_every=-1", "'train.sample_every' must be >= 0"),
        ("train.batch_size=0", "'train.batch_size' must be positive"),
        ("train.batch_size=-4", "'train.batch_size' must be positive"),
        ("train.ckpt_every=-1", "'train.ckpt_every' must be >= 0"),
        ("train.log_every=0", "'train.log_every' must be positive"),
        ("train.grad_accum=0", "'train.grad_accum' must be positive"),
        ("train.lr=.nan", "'train.lr' must be a finite number"),
        ("sample.cfg_interval=[0.8,0.2]", "needs lo <= hi"),
        ("train.ema_decays=[1.5]", "must lie in (0, 1)"),
        ("encoders.cache=/tmp/x", "'encoders' is a list of entries"),
    ],
)
def test_values_out_of_range_are_refused_in_the_schema(capsys, tmp_path, override, needle):
    one_line_error(capsys, ["train", "demo-fashion-sit", *TINY, override, "--out", str(tmp_path / "r")], needle)
    assert not (tmp_path / "r").exists()  # nothing created for a refused config


def test_nan_guidance_scale_on_the_command_line(capsys, run):
    one_line_error(capsys, ["sample", str(run), "--num-samples", "2", "--cfg", "nan"], "'sample.cfg' must be a finite")


def test_duplicate_yaml_keys_are_refused(capsys, tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("inherit: demo-fashion-sit\ntrain:\n  lr: 0.1\n  steps: 3\n  lr: 0.2\n")
    one_line_error(capsys, ["train", str(cfg), "--dry-run"], "duplicate key 'lr' on line 5")


def test_out_that_is_a_file_or_under_a_file(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(capsys, ["train", "demo-fashion-sit", *TINY, "--out", str(f)], "is a file, not a directory")
    one_line_error(capsys, ["train", "demo-fashion-sit", *TINY, "--out", str(f / "run")], "is a file")


def copy_run(run, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst


def newest(run: Path) -> Path:
    return sorted((run / "checkpoints").iterdir())[-1]


def test_damaged_checkpoints_are_one_line_errors(capsys, run, tmp_path):
    bad = copy_run(run, tmp_path)
    ckpt = newest(bad)
    (ckpt / "config.yaml").write_text("model: [unclosed\n")
    one_line_error(capsys, ["sample", str(bad), "--num-samples", "1"], "config.yaml is not a valid repflow config")
    (ckpt / "config.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    one_line_error(capsys, ["sample", str(bad), "--num-samples", "1"], "not a valid repflow config")
    (ckpt / "config.yaml").write_text((run / "config.yaml").read_text())
    save_file({"x_embedder.weight": torch.zeros(3, 3)}, str(ckpt / "ema-0.9.safetensors"))
    one_line_error(capsys, ["sample", str(bad), "--num-samples", "1"], "does not fit the stored config")
    torch.save({"step": 4, "evil": Path("/")}, ckpt / "state.pt")  # a pickled object, not plain data
    argv = ["train", "demo-fashion-sit", *TINY, "train.steps=6", "--out", str(bad)]
    one_line_error(capsys, argv, "needs code to be unpickled", "refused")


def test_a_config_edited_after_training_is_refused(capsys, run, tmp_path):
    bad = copy_run(run, tmp_path)
    cfg = newest(bad) / "config.yaml"
    cfg.write_text(cfg.read_text().replace("prediction: v", "prediction: x"))
    one_line_error(capsys, ["sample", str(bad), "--num-samples", "1"], "flow.prediction is 'x' there", "'v'")


def test_resuming_a_finished_run_names_its_checkpoint(capsys, run, tmp_path):
    done = copy_run(run, tmp_path)
    assert main(["train", "demo-fashion-sit", *TINY, "--out", str(done)]) == 0
    out = capsys.readouterr().out
    assert "trained 0 steps" in out and "ckpt-00000004" in out and "checkpoint: None" not in out
    assert "resumed from" in out and "image 32" in out  # the start-up summary says where it continues
    assert f"next: repflow sample {done} --num-samples 16" in out and f"repflow eval {done}" in out


def test_dry_run_into_a_closed_pipe_is_quiet():
    code = "import sys; from repflow.cli import main; sys.exit(main(['train', 'demo-fashion-reg', '--dry-run']))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" | head -1", shell=True, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.stdout.strip() == "name: demo-fashion-reg" and "Traceback" not in proc.stderr, proc.stderr


def test_encoder_weights_of_another_architecture(capsys, tmp_path):
    from repflow.encoders.tiny import TinyViT, TinyViTConfig, save_tiny

    f = tmp_path / "tiny.safetensors"
    save_tiny(TinyViT(TinyViTConfig(image_size=8, dim=16, depth=1, heads=2)), f, {})
    argv = ["train", "demo-fashion-sit", *TINY, "repa.enabled=true", f"encoders=[{{name: dinov2-vits14, path: {f}}}]",
            "--out", str(tmp_path / "r")]  # fmt: skip
    one_line_error(capsys, argv, "do not fit encoder dinov2-vits14", "encoders[i].name")


def write_images(folder: Path, n: int, size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(g.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def eval_folders(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """Six sample and eight reference images, measured by the tiny stand-in Inception with a private cache."""
    from .eval.conftest import _Top

    net = tmp_path / "inception.pt"
    torch.jit.script(_Top().eval()).save(str(net))
    monkeypatch.setenv("REPFLOW_INCEPTION", str(net))
    monkeypatch.setenv("REPFLOW_CACHE", str(tmp_path / "cache"))
    samples, ref = tmp_path / "samples", tmp_path / "ref"
    write_images(samples, 6)
    write_images(ref, 8)
    return samples, ref


def test_eval_skips_and_reports_unreadable_files(capsys, tmp_path, monkeypatch):
    samples, ref = eval_folders(tmp_path, monkeypatch)
    (samples / "000006.png").write_bytes(b"")  # empty
    (samples / "000007.png").write_bytes((samples / "000000.png").read_bytes()[:40])  # truncated
    (samples / "notes.jpg").write_text("not an image")  # a text file with an image name
    Image.new("RGB", (40, 40)).save(samples / "grid-like.png")  # another size
    assert main(["eval", str(samples), "--ref", str(ref), "--metrics", "fid"]) == 0
    captured = capsys.readouterr()
    assert "(6 samples, 4 unreadable files left out)" in captured.out
    assert "warning: skipped 4 of 10 files" in captured.err
    record = json.loads((samples / "eval.json").read_text())
    assert record["skipped_files"]["count"] == 4 and record["num_samples"] == 6
    # the reference folder grew: its statistics are recomputed, not silently reused
    assert main(["eval", str(samples), "--ref", str(ref), "--metrics", "fid"]) == 0
    assert "statistics reused" in capsys.readouterr().err
    write_images(ref, 10)
    assert main(["eval", str(samples), "--ref", str(ref), "--metrics", "fid"]) == 0
    assert "statistics reused" not in capsys.readouterr().err


def test_eval_reports_unreadable_files_of_a_reference_folder(capsys, tmp_path, monkeypatch):
    """A reference folder leaves out the same files a sample folder does, and says so: when its statistics are
    computed, on every reuse of them, and in eval.json."""
    samples, ref = eval_folders(tmp_path, monkeypatch)
    (ref / "000008.png").write_bytes(b"")  # empty
    (ref / "000009.png").write_bytes((ref / "000000.png").read_bytes()[:40])  # truncated
    Image.new("RGB", (40, 40)).save(ref / "000010.png")  # another size
    for reused in (False, True):
        assert main(["eval", str(samples), "--ref", str(ref), "--metrics", "fid"]) == 0
        err = capsys.readouterr().err
        assert ("statistics reused" in err) == reused
        assert f"warning: reference: skipped 3 of 11 files under {ref} (000008.png: unreadable" in err
        reference = json.loads((samples / "eval.json").read_text())["reference"]
        assert reference["count"] == 8 and reference["skipped_files"].startswith("skipped 3 of 11 files")


def test_eval_of_a_folder_written_by_repflow_sample(capsys, run, tmp_path, monkeypatch):
    from .eval.conftest import _Top

    net = tmp_path / "inception.pt"
    torch.jit.script(_Top().eval()).save(str(net))
    monkeypatch.setenv("REPFLOW_INCEPTION", str(net))
    monkeypatch.setenv("REPFLOW_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "s"
    assert main(["sample", str(run), "--num-samples", "4", "--steps", "2", "--out", str(out)]) == 0
    assert (out / "grid.png").is_file()
    assert main(["eval", str(out), "--ref", "synthetic", "--ref-count", "8", "--metrics", "fid"]) == 0
    assert "(4 samples)" in capsys.readouterr().out  # grid.png is not one of them


def test_image_folders_with_an_empty_class_or_a_link_loop(capsys, tmp_path):
    from repflow.data import ImageFolderDataset

    root = tmp_path / "data"
    write_images(root / "a", 3)
    write_images(root / "b", 2)
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)  # a -> a/loop -> a ...
    ds = ImageFolderDataset(root, 8)
    assert len(ds) == 5 and ds.num_classes == 2  # each file once
    (root / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="class folder.*c.*hold no images"):
        ImageFolderDataset(root, 8)

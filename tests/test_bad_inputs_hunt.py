"""The second bad-input hunt (after issue 22): files that a command would have replaced or mixed with its own
(a run's weights, a reference image, another run's checkpoints, a folder of one's own PNGs), numbers out of any
sensible range, and files that are empty or not what they claim. Each ends in one line and exit 2, and the file
or run it names is left as it was."""

import shutil

import numpy as np
import pytest
from PIL import Image

from repflow.cli import main

from .conftest import TINY
from .test_bad_inputs import one_line_error
from .test_bad_inputs_files import pixel_run  # noqa: F401  (the module's tiny run and its official-sit export)


def checkpoints(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_nothing_existing_is_replaced(capsys, pixel_run, tmp_path):  # noqa: F811
    run, _ = pixel_run
    weights = run / "checkpoints" / "ckpt-00000004" / "model.safetensors"
    before = weights.read_bytes()
    one_line_error(capsys, ["convert", "--to", "official-sit", str(run), "--out", str(weights)], "exists; choose a new")
    assert weights.read_bytes() == before
    picture = tmp_path / "picture.png"
    Image.new("RGB", (8, 8)).save(picture)
    one_line_error(capsys, ["eval", str(tmp_path), "--json", str(picture)], "exists and is not an eval result")
    assert picture.read_bytes()[:4] == b"\x89PNG"
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    one_line_error(capsys, ["train", "demo-fashion-sit", *TINY, "--no-resume", "--out", str(copy)],
                   "already holds a run's checkpoints")  # fmt: skip
    assert checkpoints(copy) == checkpoints(run)


def test_sample_writes_only_into_its_own_folders(capsys, pixel_run, tmp_path):  # noqa: F811
    run, _ = pixel_run
    own = tmp_path / "mine"
    own.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(own / "000000.png")
    sample = ["sample", str(run), "--num-samples", "1", "--steps", "1", "--out"]
    one_line_error(capsys, [*sample, str(own)], "numbered PNGs that repflow sample did not write")
    assert sorted(p.name for p in own.iterdir()) == ["000000.png"]
    one_line_error(capsys, [*sample, str(run)], "is a run or checkpoint folder")
    damaged = tmp_path / "damaged"
    assert main([*sample, str(damaged)]) == 0
    (damaged / "samples.json").write_text("[]")
    one_line_error(capsys, [*sample, str(damaged)], "samples.json is damaged")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["sample", "RUN", "--num-samples", "99999999999999999999"], "must be at most 1,000,000,000"),
        (["bench", "inception", "--num", "0"], "must be >= 1, got 0"),
        (["bench", "inception", "--resolution", "0"], "must be >= 1, got 0"),
        (["bench", "inception", "--threads", "-1"], "must be >= 0, got -1"),
        (["bench", "throughput", "--repeats", "0"], "must be >= 1, got 0"),
        (["init", "FOLDER", "--minutes", "inf"], "must be a finite number > 0, got inf"),
        (["init", "FOLDER", "--minutes", "nan"], "must be a finite number > 0, got nan"),
        (["init", "FOLDER", "--minutes", "-3"], "must be a finite number > 0, got -3"),
        (["sample", "RUN", "--num-samples", "0"], "must be >= 1, got 0"),
        (["eval", "RUN", "--batch-size", "0"], "must be >= 1, got 0"),
        (["sample", "RUN", "--batch-size", "0"], "must be >= 1, got 0"),
        (["cache", "features", "demo-fashion-repa", "--out", "x", "--batch-size", "0"], "must be >= 1, got 0"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(capsys, argv, needle):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and needle in err[0], err


def test_empty_and_unreadable_files(capsys, tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.touch()
    one_line_error(capsys, ["encoder", "info", str(empty)], "is not a repflow tiny-encoder file")
    folder = tmp_path / "cut"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)).save(tmp_path / "whole.png")
    for i in range(3):
        (folder / f"{i}.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    one_line_error(capsys, ["train", "demo-fashion-sit", *TINY, "model.num_classes=0", "sample.cfg=1",
                            "data.dataset=image_folder", f"data.root={folder}", "--out", str(tmp_path / "r")],
                   "no readable image among the 3 files under")  # fmt: skip
    one_line_error(capsys, ["eval", str(tmp_path), "--metrics", "precision", "--k", "0"], "--k")


def test_an_empty_config_and_zero_steps(capsys, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    one_line_error(capsys, ["train", str(empty), "--dry-run"], "is empty: a config file holds settings")
    one_line_error(capsys, ["train", "demo-fashion-sit", *TINY, "train.steps=0", "--out", str(tmp_path / "r")],
                   "train.steps=0 trains nothing")  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_init_from_a_run_sharing_no_weights_and_list_indices(capsys, pixel_run, tmp_path):  # noqa: F811
    run, _ = pixel_run
    one_line_error(capsys, ["train", "toy-manifold", "method.dim=8", "method.width=16", "method.depth=2",
                            "train.steps=1", "--init-from", str(run), "--out", str(tmp_path / "toy")],
                   "shares no weights with this model")  # fmt: skip
    one_line_error(capsys, ["train", "demo-fashion-sit", "encoders.3.name=tiny", "--dry-run"],
                   "the list has 0 entries (it is empty: index 0 adds one)")  # fmt: skip


def test_images_beside_class_folders_are_not_dropped_silently(capsys, tmp_path):
    folder = tmp_path / "half"
    (folder / "thumbs").mkdir(parents=True)
    for name in ("a.png", "b.png", "thumbs/c.png"):
        Image.new("RGB", (16, 16)).save(folder / name)
    said = "holds 2 image(s) (a.png, ...) beside its class folder(s) (thumbs): they would be left out"
    one_line_error(capsys, ["init", str(folder), "--out", str(tmp_path / "x.yaml")], said)
    assert not (tmp_path / "x.yaml").exists()


def test_a_damaged_class_names_file_is_said(capsys, pixel_run, tmp_path):  # noqa: F811
    copy = tmp_path / "copy"
    shutil.copytree(pixel_run[0], copy)
    names = copy / "checkpoints" / "ckpt-00000004" / "classes.json"
    for damaged in ("[1,2", '{"a": 1}'):
        names.write_text(damaged)
        one_line_error(capsys, ["sample", str(copy), "--num-samples", "1", "--steps", "1"],
                       "classes.json is damaged (not a list of class names)")  # fmt: skip
    names.unlink()
    assert main(["sample", str(copy), "--num-samples", "1", "--steps", "1", "--classes", "0"]) == 0


def test_sampling_options_that_do_nothing_for_the_run_are_refused(capsys, pixel_run, tmp_path):  # noqa: F811
    run, _ = pixel_run
    sample = ["sample", str(run), "--num-samples", "1", "--steps", "1", "--out"]
    one_line_error(capsys, [*sample, str(tmp_path / "a"), "--vae", str(tmp_path)], "trained in pixel space")
    one_line_error(capsys, [*sample, str(tmp_path / "b"), "--cfg-cls", "3"], "scales REG's class token")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    from repflow.train.loop import Trainer

    from .conftest import tiny_config

    encoder = tmp_path / "encoder"  # a SimCLR run: nothing to guide with
    Trainer(tiny_config("method.kind=simclr", "train.steps=1", "train.ema_decays=[]", "train.sample_num=0"),
            encoder).fit()  # fmt: skip
    one_line_error(capsys, [*sample, str(tmp_path / "c"), "--cfg", "2", "--guide", str(encoder)],
                   "its method (simclr) does not generate images")  # fmt: skip

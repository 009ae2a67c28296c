"""`repflow sample` as a user meets it: folder names that say everything, chosen classes, labelled .npz."""

import json

import numpy as np
import pytest

from repflow.cli import main
from repflow.runtime.lookup import load_checkpoint
from repflow.sample.runs import folder_name

from ..conftest import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "demo-fashion-sit", *TINY, "train.steps=2", "--out", str(out)]) == 0
    return out


def test_default_folder_name_holds_every_setting_that_matters(run, capsys):
    argv = ["sample", str(run), "--num-samples", "2", "--steps", "2", "--cfg", "1.5", "--cfg-interval", "0,0.7",
            "--classes", "1,3"]  # fmt: skip
    assert main(argv) == 0
    folders = lambda: sorted(p.name for p in (run / "samples").iterdir() if p.is_dir())  # noqa: E731
    assert folders() == ["ckpt-00000002-ema-0.9-euler2-cfg1.5-int0-0.7-classes1_3-seed0"]
    from repflow.config import SampleConfig

    # REG's class-token scale (refused on this SiT run, which has no token) names its folder too
    assert "-cls1.2-" in folder_name("ckpt-1", SampleConfig(cfg=1.5, cfg_cls=1.2), 0.9)
    assert main([*argv[:-2], "--classes", "3,1"]) == 0
    assert len(folders()) == 2  # other classes: another folder
    capsys.readouterr()


def test_classes_by_index_or_name_and_labelled_npz(run, capsys):
    assert load_checkpoint(run).class_names() == ["class0", "class1", "class2", "class3"]  # stored with the run
    out = run / "chosen"
    assert main(["sample", str(run), "--num-samples", "4", "--steps", "2", "--classes", "class2,0", "--npz",
                 "--out", str(out)]) == 0  # fmt: skip
    with np.load(out / "samples.npz") as z:
        assert z["arr_0"].shape == (4, 8, 8, 3) and z["arr_1"].tolist() == [2, 0, 2, 0]
    assert json.loads((out / "samples.json").read_text())["labels"] == "classes [2, 0][index mod 2]"
    code = main(["sample", str(run), "--num-samples", "2", "--classes", "7", "--out", str(run / "x")])
    assert code == 2 and "classes [7] do not exist" in capsys.readouterr().err
    code = main(["sample", str(run), "--num-samples", "2", "--classes", "sneaker", "--out", str(run / "x")])
    assert code == 2 and "unknown class 'sneaker'" in capsys.readouterr().err


def test_a_failed_run_leaves_no_manifest_that_blocks_the_corrected_command(run, capsys):
    out = run / "retry"
    assert main(["sample", str(run), "--num-samples", "2", "--sampler", "dopri5", "--steps", "2", "--out",
                 str(out), "--batch-size", "1"]) == 0  # fmt: skip
    for f in out.glob("*.png"):
        f.unlink()  # as if the first run had died before writing its first image
    assert main(["sample", str(run), "--num-samples", "2", "--steps", "2", "--out", str(out)]) == 0
    assert json.loads((out / "samples.json").read_text())["sample"]["sampler"] == "euler"


def test_the_multistep_solver_and_the_guidance_rule_from_the_command_line(run, capsys):
    argv = ["sample", str(run), "--num-samples", "2", "--sampler", "dpmpp_2m", "--steps", "3", "--cfg", "2",
            "--cfg-interval", "0,0.7", "--cfg-rule", "evaluation_strict"]  # fmt: skip
    assert main(argv) == 0
    folder = run / "samples" / "ckpt-00000002-ema-0.9-dpmpp_2m3-cfg2-int0-0.7-rule-evaluation_strict-seed0"
    manifest = json.loads((folder / "samples.json").read_text())["sample"]
    assert manifest["sampler"] == "dpmpp_2m" and manifest["cfg_rule"] == "evaluation_strict"
    assert (
        main([*argv[:-1], "step"]) == 0
        and (run / "samples" / folder.name.replace("-rule-evaluation_strict", "")).is_dir()
    )
    with pytest.raises(SystemExit):
        main([*argv[:5], "unipc"])
    err = capsys.readouterr().err
    assert "invalid choice: 'unipc'" in err and "dpmpp_2m" in err


def test_folder_name_function_defaults():
    from repflow.config import SampleConfig

    assert folder_name("ckpt-1", SampleConfig(), 0.9999) == "ckpt-1-ema-0.9999-heun50-cfg1-seed0"
    assert folder_name("ckpt-1", SampleConfig(sampler="sde"), "raw", guide="/runs/small") == (
        "ckpt-1-raw-sde50-cfg1-guide-small-seed0"
    )
    jit = SampleConfig(cfg=2.9, cfg_interval=(0.0, 0.9), cfg_rule="evaluation_strict")
    assert folder_name("ckpt-1", jit, 0.9999) == "ckpt-1-ema-0.9999-heun50-cfg2.9-int0-0.9-rule-evaluation_strict-seed0"


def test_every_jit_recipe_decides_guidance_as_the_official_code():
    from repflow.config import list_presets, load_config

    jit = [p for p in list_presets() if p.startswith("jit-")] + ["demo-fashion-jit"]
    assert len(jit) == 9 and all(load_config(p).sample.cfg_rule == "evaluation_strict" for p in jit)
    assert load_config("sit-xl2-repa-in256").sample.cfg_rule == "step"  # REPA's rule


def test_autoguidance_from_the_config_or_the_command_line(run, tmp_path, capsys):
    from repflow.sample.sharded import read_samples

    strong = tmp_path / "strong"
    assert main(["train", "demo-fashion-sit", *TINY, "train.steps=3", "seed=1", f"sample.guide={run}",
                 "sample.guide_scale=2.0", "--out", str(strong)]) == 0  # fmt: skip
    base = ["sample", str(strong), "--num-samples", "2", "--steps", "2"]
    assert main(base) == 0  # the stored sample.guide applies
    (folder,) = [p for p in (strong / "samples").iterdir() if p.is_dir()]
    assert "guide-run" in folder.name and json.loads((folder / "samples.json").read_text())["guide"]
    explicit, alone, plain = tmp_path / "explicit", tmp_path / "alone", tmp_path / "plain"
    assert main([*base, "--guide", str(run), "--guide-scale", "2", "--out", str(explicit)]) == 0
    assert main([*base, "--guide-scale", "1", "--out", str(alone)]) == 0  # scale 1: the model alone
    assert main([*base, "--cfg", "1", "--out", str(plain), "--guide-scale", "-1"]) == 0  # -1: sample.cfg = 1
    read = lambda f: read_samples(f, range(2))  # noqa: E731
    assert (read(folder) == read(explicit)).all() and (read(alone) == read(plain)).all()
    assert not (read(folder) == read(alone)).all()
    capsys.readouterr()

"""`repflow sweep`: a grid of sampling settings to a table and a plot, resumed when interrupted; `--write` makes
the best the run's default for `repflow sample`, `repflow eval` and `repflow.load`."""

import csv
import json

import pytest

import repflow
from repflow.cli import main
from repflow.eval import sweep as sweep_module
from repflow.train.loop import Trainer

from ..conftest import tiny_config

MEASURE = ["--num-samples", "6", "--ref-count", "12"]


@pytest.fixture
def run(tmp_path):
    Trainer(tiny_config(), tmp_path / "run").fit()  # sample section: euler 2 steps, cfg 1, EMA 0.9 first
    return tmp_path / "run"


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as err:  # argparse's refusals
        return err.code


def table(path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_sweep_writes_its_best_setting_and_sample_eval_and_load_use_it(run, tmp_path, fake_inception_env, capsys):
    argv = ["sweep", str(run), "--cfg", "1.5,2", "--interval", "0,1:0,0.7", "--steps", "3", "--ema", "0,0.9",
            *MEASURE, "--write"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = table(run / "sweep" / "ckpt-00000004" / "sweep.csv")
    assert len(rows) == 8 and {r["steps"] for r in rows} == {"3"} and {r["ema"] for r in rows} == {"raw", "0.9"}
    assert {(r["interval_lo"], r["interval_hi"]) for r in rows} == {("0", "1"), ("0", "0.7")}
    assert {r["seed"] for r in rows} == {"0"} and {r["reference"] for r in rows} == {"synthetic:train"}
    assert (run / "sweep" / "ckpt-00000004" / "sweep.png").stat().st_size > 1000
    best = min(rows, key=lambda r: float(r["fid"]))
    stored = json.loads((run / "sampling.json").read_text())
    lo, hi = float(best["interval_lo"]), float(best["interval_hi"])
    assert stored["sample"] == {"sampler": "euler", "steps": 3, "cfg": float(best["cfg"]), "cfg_interval": [lo, hi]}
    assert stored["ema"] == (0.0 if best["ema"] == "raw" else 0.9) and stored["record"]["value"] == float(best["fid"])
    assert "best: euler 3 steps" in out and f"stored in {run / 'sampling.json'}" in out
    assert not list((run / "sweep" / "ckpt-00000004" / "samples").rglob("*.png"))  # measured, then dropped

    # repflow eval with no sampling option: the stored setting, said on stdout, gives the sweep's number
    assert main(["eval", str(run), *MEASURE, "--metrics", "fid", "--json", str(tmp_path / "e.json")]) == 0
    assert "sampling with the setting `repflow sweep --write` stored in" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["fid"] == float(best["fid"])
    # repflow sample: the stored setting in the folder name; an option given explicitly wins
    assert main(["sample", str(run), "--num-samples", "2", "--cfg", "1.25"]) == 0
    said = capsys.readouterr().out
    assert "used here: sampler, steps, cfg_interval, ema" in said and "-euler3-cfg1.25-" in said
    model = repflow.load(run)
    assert "sampling with the setting" in capsys.readouterr().out
    assert model.cfg.sample.steps == 3 and model.cfg.sample.cfg == float(best["cfg"]) and model.ema == (
        "raw" if best["ema"] == "raw" else 0.9)  # fmt: skip
    assert repflow.load(run, ema=0).ema == "raw"


def test_an_interrupted_sweep_keeps_what_it_finished(run, tmp_path, fake_inception_env, monkeypatch):
    argv = ["sweep", str(run), "--cfg", "1,1.5,2", "--interval", "0,1:0,0.7", *MEASURE, "--out", str(tmp_path / "s")]
    real, calls, kill = sweep_module.measure_samples, [], [True]

    def dies_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and kill:
            kill.clear()
            raise KeyboardInterrupt  # killed while measuring its third cell (its samples are written)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "measure_samples", dies_at_the_third)
    assert main(argv) == 130  # interrupted
    assert len(table(tmp_path / "s" / "sweep.csv")) == 2
    made = []
    real_sample_run = sweep_module.sample_run
    monkeypatch.setattr(sweep_module, "sample_run", lambda *a, **k: made.append(r := real_sample_run(*a, **k)) or r)
    calls.clear()
    assert main(argv) == 0
    # six cells; cfg 1 draws the same images for both intervals: 5 measured, 2 before and 3 now
    assert len(calls) == 3 and made[0].made.count == 0  # the third cell's samples were kept
    resumed = table(tmp_path / "s" / "sweep.csv")
    assert main([*argv[:-1], str(tmp_path / "straight")]) == 0
    straight = table(tmp_path / "straight" / "sweep.csv")
    key = lambda r: (r["cfg"], r["interval_lo"], r["interval_hi"], r["fid"])  # noqa: E731
    assert sorted(map(key, resumed)) == sorted(map(key, straight)) and len(straight) == 6
    cfg1 = [r["fid"] for r in straight if r["cfg"] == "1"]
    assert len(cfg1) == 2 and cfg1[0] == cfg1[1]


def test_sweep_from_python(run, fake_inception_env):
    result = repflow.sweep(run, cfg=[1.5, 2.0], steps=[3], num_samples=6, ref_count=12, keep_samples=True)
    assert len(result.rows) == 2 and result.best in result.rows and result.png.is_file()
    assert len(list((result.csv.parent / "samples").rglob("*.png"))) == 12 and result.written is None
    assert not (run / "sampling.json").exists()


def test_a_sweep_by_kid_with_fd_in_dinov2_space(run, tmp_path, fake_inception_env, dinov2_dir, capsys):
    metrics = ["--metrics", "kid,fd_dinov2@28", "--encoder-path", f"dinov2={dinov2_dir}", "--kid-subsets", "5",
               "--kid-subset-size", "4"]  # fmt: skip
    assert main(["sweep", str(run), "--cfg", "1.5,3", "--steps", "3", *MEASURE, *metrics, "--out", str(tmp_path)]) == 0
    rows = table(tmp_path / "sweep.csv")
    assert [k for k in rows[0] if k in ("kid", "kid_std", "fd_dinov2@28")] == ["kid", "kid_std", "fd_dinov2@28"]
    protocol = json.loads((tmp_path / "sweep.json").read_text())
    assert set(protocol["extractors"]) == {"inception", "dinov2-vitl14@28"} and protocol["kid_subsets"] == 5
    best = min(rows, key=lambda r: float(r["kid"]))  # chosen by the first metric: KID, lower is better
    assert f"kid {best['kid']}" in capsys.readouterr().out
    # a cell's numbers are `repflow eval`'s of that setting
    argv = ["eval", str(run), *MEASURE, *metrics, "--cfg", best["cfg"], "--sampling-steps", "3", "--ema", "0.9",
            "--samples-dir", str(tmp_path / "later"), "--json", str(tmp_path / "later.json")]  # fmt: skip
    assert main(argv) == 0
    later = json.loads((tmp_path / "later.json").read_text())["metrics"]
    assert {k: repr(v) for k, v in later.items()} == {k: best[k] for k in later}


def test_bad_sweeps_are_one_line(run, tmp_path, fake_inception_env, capsys):
    Trainer(tiny_config("method.kind=simclr", "train.steps=1", "train.ema_decays=[]", "train.sample_num=0"),
            tmp_path / "encoder").fit()  # fmt: skip
    capsys.readouterr()
    cases = [
        (["--cfg", ""], "the grid is empty: --cfg lists no value"),
        ([], "nothing to sweep: give values to at least one of --cfg, --interval, --steps, --sampler, --ema"),
        (["--cfg", "1", "--sampler", "euler,rk4"], "config key 'sample.sampler' must be one of"),
        (["--cfg", "1", "--ema", "0.5"], "the checkpoint has no EMA 0.5 weights for model"),
        (["--cfg", "1", "--interval", "0.7,0.2"], "sample.cfg_interval' needs lo <= hi"),
        (["--cfg", "1", "--metrics", "fid,fdd"], "unknown metric 'fdd'; choose from fid, sfid, is"),
        (["--cfg", "1", "--metrics", "fd_dinoo"], "unknown feature space 'dinoo'"),
        (["--cfg", "1", "--metrics", "fd_dinov2", "--encoder-path", "dinoo=/w.pth"], "unknown feature space 'dinoo'"),
        (["--cfg", "1", "--encoder-path", "dinov2"], "expected NAME=PATH"),
        (["--cfg", "1", "--metrics", "kid", "--kid-subset-size", "1"], "KID needs --kid-subsets >= 1"),
        (["--cfg", "1", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--cfg", "1", "--steps", "x"], "argument --steps: expected comma-separated whole numbers >= 0"),
    ]
    for extra, message in cases:
        assert exit_code(["sweep", str(run), *extra, *MEASURE]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    assert main(["sweep", str(tmp_path / "encoder"), "--cfg", "1", *MEASURE]) == 2
    assert "method simclr, which does not generate images: nothing to sweep" in capsys.readouterr().err
    assert main(["sweep", str(run), "--cfg", "1", *MEASURE, "--out", str(tmp_path / "o")]) == 0
    assert (
        main(["sweep", str(run), "--cfg", "1", "--num-samples", "4", "--ref-count", "12", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "holds a sweep with other settings (num_samples differ)" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_sweep_like_one_and_skip_the_same_cells(run, tmp_path, fake_inception_env):
    from ..train.test_distributed import launch

    grid = ["--cfg", "1,2", "--interval", "0,1:0,0.7", *MEASURE]
    assert main(["sweep", str(run), *grid, "--out", str(tmp_path / "one")]) == 0
    assert main(["sweep", str(run), "--cfg", "2", *MEASURE, "--out", str(tmp_path / "two")]) == 0  # one cell done
    launch(2, "-m", "repflow.cli", "sweep", str(run), *grid, "--out", str(tmp_path / "two"))
    key = lambda r: (r["cfg"], r["interval_lo"], r["interval_hi"], r["fid"])  # noqa: E731
    one, two = table(tmp_path / "one" / "sweep.csv"), table(tmp_path / "two" / "sweep.csv")
    assert len(two) == 4 and sorted(map(key, one)) == sorted(map(key, two))

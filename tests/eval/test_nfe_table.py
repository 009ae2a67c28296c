"""``benchmarks/nfe_table.py`` at tiny size: every sampler and budget evaluated, Heun's steps fitted to the budget."""

import csv
import importlib.util
from pathlib import Path

import pytest

from repflow.cli import main as cli

from ..conftest import TINY

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nfe_table.py"


def load_script():
    spec = importlib.util.spec_from_file_location("nfe_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_heun_gets_the_most_steps_that_fit_the_budget():
    steps_for = load_script().steps_for
    assert [steps_for("heun", n) for n in (1, 2, 4, 50)] == [(1, 1), (1, 1), (2, 3), (25, 49)]
    assert steps_for("dpmpp_2m", 8) == steps_for("euler", 8) == (8, 8)
    with pytest.raises(ValueError, match="no fixed NFE per step"):
        steps_for("dopri5", 8)


def test_the_table_on_a_tiny_run(tmp_path, fake_inception_env, capsys):
    run = tmp_path / "run"
    assert cli(["train", "demo-fashion-sit", *TINY, "train.steps=2", "--out", str(run)]) == 0
    out = tmp_path / "nfe.csv"
    rows = load_script().main([str(run), "--nfe", "1,2", "--num-samples", "4", "--ref-count", "8", "--cfg", "1.5",
                               "--out", str(out)])  # fmt: skip
    assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [
        ("euler", 1, 1), ("euler", 2, 2), ("heun", 1, 1), ("heun", 1, 1), ("dpmpp_2m", 1, 1), ("dpmpp_2m", 2, 2)
    ]  # fmt: skip
    assert all(r["fid"] >= 0 for r in rows) and len(list(csv.DictReader(out.open()))) == 6
    shown = capsys.readouterr().out
    assert "| dpmpp_2m |" in shown and "(1) |" in shown  # heun at budget 2 used 1 evaluation
    folders = {p.name for p in (run / "eval").iterdir() if p.is_dir()}
    assert "ckpt-00000002-ema-0.9-dpmpp_2m2-cfg1.5-seed0" in folders and len(folders) == 5  # heun1 shared


def test_an_interrupted_table_keeps_the_cells_it_measured(tmp_path, monkeypatch):
    import repflow

    calls = []

    def fake_evaluate(run, **kw):
        calls.append(kw["sampler"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {"fid": float(len(calls))}

    monkeypatch.setattr(repflow, "evaluate", fake_evaluate)
    out = tmp_path / "nfe.csv"
    with pytest.raises(KeyboardInterrupt):
        load_script().main([str(tmp_path / "run"), "--nfe", "1,2", "--samplers", "euler,heun", "--out", str(out)])
    assert [(r["sampler"], r["budget"], r["fid"]) for r in csv.DictReader(out.open())] == [
        ("euler", "1", "1.0"), ("euler", "2", "2.0")
    ]  # fmt: skip
    assert not out.with_suffix(".csv.tmp").exists()

import csv
import json

from repflow.cli import main

from ..conftest import TINY


def test_convergence_two_configs_csv_plot_and_resume(tmp_path, fake_inception_env, capsys):
    other = tmp_path / "small-lr.yaml"
    other.write_text("inherit: demo-fashion-sit\ntrain:\n  lr: 1.0e-5\n")
    out = tmp_path / "bench"
    argv = ["bench", "convergence", "demo-fashion-sit", str(other), *TINY, "--steps", "2,4", "--num-samples", "6",
            "--ref-count", "12", "--sampling-steps", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [(r["config"], r["step"]) for r in rows] == [("demo-fashion-sit", "2"), ("demo-fashion-sit", "4"),
                                                        ("small-lr", "2"), ("small-lr", "4")]  # fmt: skip
    assert {r["images_seen"] for r in rows} == {"16", "32"} and {r["sampling_steps"] for r in rows} == {"2"}
    assert {r["reference"] for r in rows} == {"synthetic:train"} and all(float(r["fid"]) > 0 for r in rows)
    assert (out / "convergence.png").stat().st_size > 1000
    record = json.loads((out / "samples" / "small-lr" / "step-4" / "eval.json").read_text())
    assert record["train_step"] == 4 and record["sampler"] == "euler"
    # same seed and data: the two runs differ only in what the configs change
    cfgs = [json.dumps((out / "runs" / n / "config.yaml").read_text().replace("lr: 1.0e-05", "lr: 0.001"))
            for n in ("demo-fashion-sit", "small-lr")]  # fmt: skip
    assert cfgs[0] == cfgs[1]
    capsys.readouterr()
    assert main(argv) == 0  # everything done: nothing retrained or resampled
    assert "FID" not in capsys.readouterr().out.split("config,step")[0]


def test_different_batch_sizes_are_refused(tmp_path, fake_inception_env, capsys):
    other = tmp_path / "big.yaml"
    other.write_text("inherit: demo-fashion-sit\ntrain:\n  batch_size: 16\n")
    argv = ["bench", "convergence", "demo-fashion-sit", str(other), "--steps", "2", "--out", str(tmp_path / "b")]
    assert main(argv) == 2
    assert "differ in train.batch_size" in capsys.readouterr().err

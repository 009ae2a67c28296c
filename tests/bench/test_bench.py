import json

import torch

from repflow.bench.common import bench_config
from repflow.cli import main


def test_bench_configs_for_each_method():
    sit, repa, reg = (bench_config("SiT-XL/2", m, 256) for m in ("sit", "repa", "reg"))
    assert sit.model.depth == 28 and not sit.repa.enabled
    assert repa.repa.enabled and repa.repa.depth == 8 and not repa.reg.enabled
    assert reg.reg.enabled and reg.reg.dim == 768 and reg.encoders[0].resolution == 224


def test_bench_throughput_and_sample_cli(tmp_path, capsys):
    out = tmp_path / "train.json"
    args = ["--arch", "SiT-T/8", "--batch", "2", "--repeats", "1", "--device", "cpu", "--out", str(out)]
    assert main(["bench", "throughput", *args, "model.depth=1"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["sit", "repa", "reg"]
    assert all(r["images_per_s"] > 0 and r["mfu"] > 0 for r in rows)
    assert main(["bench", "sample", *args, "--steps", "2", "--methods", "reg", "model.depth=1"]) == 0
    assert json.loads(out.read_text())["rows"][0]["images_per_s"] > 0
    printed = capsys.readouterr().out
    assert "MFU" in printed and " n/a " in printed and "nan" not in printed  # no GPU memory to report on CPU


def test_bench_inception_prints_both_paths(tmp_path, capsys):
    from ..eval.conftest import _Top

    path = tmp_path / "fake.pt"
    torch.jit.script(_Top().eval()).save(str(path))
    argv = ["bench", "inception", "--inception", str(path), "--num", "4", "--resolution", "12", "--repeats", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(before)" in out and "(after)" in out and "speed-up" in out
    assert float(out.split("max |pool_3 difference| ")[1].split()[0]) < 1e-4

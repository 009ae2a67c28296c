"""``repflow bench gpu`` and what makes the step fast, checked on the CPU: the compiled step equals the eager
one, the step never synchronises with the host, fused AdamW and foreach EMA, batched guidance, FLOP counts."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from repflow.bench.cases import cases, with_train
from repflow.bench.common import bench_env
from repflow.bench.stages import STAGES
from repflow.bench.step import StepBench
from repflow.bench.syncs import count_host_syncs
from repflow.bench.throughput import train_flops
from repflow.build import build_method
from repflow.train.ema import EMA
from repflow.train.optim import build_optimizer, fused_adamw

CPU = torch.device("cpu")
SRC = Path(__file__).resolve().parents[2] / "src"


class Ops(TorchDispatchMode):
    """The aten ops a block runs, by name."""

    def __init__(self):
        super().__init__()
        self.names = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def tiny(key: str, batch: int = 2, *extra: str):
    return cases(tiny=True)[key].build(batch, list(extra))


def test_the_sync_counter_sees_every_kind_of_host_sync():
    x = torch.randn(5)
    with count_host_syncs() as counts:
        x.sum().item()
        bool(x[0] > 0)
        x.cpu(), x.tolist(), x.nonzero()
    assert counts["_local_scalar_dense"] >= 2 and counts["cpu"] == 1 and counts["tolist"] == 1
    assert counts["nonzero"] == 1
    with count_host_syncs() as counts:
        (x * 2 + 1).exp().sum()  # device work only: nothing read back
    assert not counts


@pytest.mark.parametrize("key", ["sit", "jit", "dit_dh"])
def test_the_training_step_never_waits_for_the_host(key):
    bench = StepBench(tiny(key), CPU)
    bench.run(1)  # the first step creates the optimiser state
    with count_host_syncs() as counts:
        logged = bench.state.run_step(bench.next_batch)
    assert dict(counts) == {}, f"{key}: host synchronisations in the step: {dict(counts)}"
    assert all(v.ndim == 0 for v in logged.values())  # the loop reads them back only at log time


def test_the_method_forward_compiles_to_one_graph():
    """No graph break in the loss (an .item() or data-dependent branch would break it and stall a GPU)."""
    bench = StepBench(tiny("sit"), CPU)
    batch = bench.next_batch(0)
    draw = bench.state.method.draw(batch, 2, torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(bench.state.method)(batch, draw, "main", 0)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


def _inductor_reason() -> str:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # any failure to find a compiler is the reason to skip
        return f"inductor cannot compile C++ here (no compiler found): {err}"
    return ""


@pytest.mark.slow  # inductor compiles the forward and backward: 40-60 s on 2 idle cores, 3 min on loaded ones
@pytest.mark.skipif(bool(_inductor_reason()), reason=_inductor_reason() or "n/a")
def test_the_compiled_step_gives_the_eager_loss_gradients_and_update():
    from torch._inductor import config as inductor

    cfg = tiny("sit", 2, "model.depth=1", "model.hidden_size=32", "repa.projector_dim=32")
    eager, compiled = StepBench(cfg, CPU), StepBench(with_train(cfg, compile=True), CPU)
    try:
        with inductor.patch(compile_threads=1):  # no worker pool to start on a small machine
            a, b = (s.state.run_step(s.next_batch) for s in (eager, compiled))
        assert b["loss"].item() == pytest.approx(a["loss"].item(), rel=1e-5)
        ref, got = dict(eager.state.method.named_parameters()), dict(compiled.state.method.named_parameters())
        for name, p in ref.items():
            if p.grad is None:
                assert got[name].grad is None, name
                continue
            scale = p.grad.abs().max().item() + 1e-12
            assert (got[name].grad - p.grad).abs().max().item() <= 1e-4 * scale, name
            assert torch.allclose(got[name], p, rtol=1e-5, atol=1e-6), name  # the same AdamW update
    finally:
        torch._dynamo.reset()


def test_fused_adamw_and_foreach_ema():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    cfg = tiny("sit").train
    opt = build_optimizer(list(model.parameters()), cfg, CPU)
    assert fused_adamw(CPU) is True and opt.defaults["fused"]  # torch >= 2.4 has the CPU kernel
    assert fused_adamw(torch.device("meta")) is None  # no kernel there: torch's default
    model(torch.randn(3, 8)).square().mean().backward()
    with Ops() as ops:
        opt.step()
    assert ops.names["_fused_adamw_"] == 2  # one launch per group (decayed matrices, the rest), whatever the size
    assert not {"addcdiv_", "lerp_", "_foreach_addcdiv_", "_local_scalar_dense"} & set(ops.names)
    ema = EMA(model, [0.9, 0.99])
    with Ops() as ops:
        ema.update(model)
    assert ops.names["_foreach_lerp_"] == 2 and "lerp_" not in ops.names  # one call per decay


def test_guided_sampling_is_one_network_call_per_evaluation():
    from repflow.bench.throughput import method_class
    from repflow.flow.generate import balanced_labels, generate

    cfg = tiny("sit", 2, "sample.sampler=heun", "sample.steps=4", "sample.cfg=1.5", "sample.cfg_interval=[0,1]")
    kind = method_class(cfg)
    networks = kind.inference_networks(cfg)
    calls = []
    networks["model"].register_forward_hook(lambda m, args, out: calls.append(args[0]["x"].shape[0]))
    out = generate(kind.denoiser(cfg, networks, CPU), cfg.sample, range(3), balanced_labels(range(3), 1000))
    assert out.nfe == 7 and calls == [6] * 7  # Heun 4 steps: 2 x 4 - 1 evaluations, each cond + uncond at once


@pytest.mark.parametrize("key", ["sit", "jit", "dit_dh"])
def test_training_flops_match_torch_flop_counter(key):
    cfg = tiny(key, 3)
    method = build_method(cfg, bench_env(cfg))
    bench = StepBench(cfg, CPU)
    batch = bench.next_batch(0)
    draw = method.draw(batch, 3, torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        method(batch, draw).total.backward()
    # the counter also sees the backward's products; the count skips the input gradient of the first layers
    # (patch embedding, time MLP): a few percent at these widths, far less at full size
    assert train_flops(cfg, method.model, 3) == pytest.approx(counter.get_total_flops(), rel=0.06), key


def test_sit_xl2_reg_training_flops_per_image():
    from repflow.bench.throughput import repa_projector_flops
    from repflow.models.flops import forward_flops

    cfg = cases(tiny=False)["sit"].build(256, [])
    with torch.device("meta"):
        method = build_method(cfg, bench_env(cfg))
    assert 3 * forward_flops(method.model) / 1e9 == pytest.approx(714.6, abs=0.1)  # SiT alone: 3 x 237.2 = 712
    assert 3 * repa_projector_flops(cfg, method.model) / 1e9 == pytest.approx(12.5, abs=0.1)  # 257 tokens
    assert train_flops(cfg, method.model, 1) / 1e9 == pytest.approx(727.1, abs=0.1)


def test_bench_gpu_tiny_runs_end_to_end_without_diffusers(tmp_path):
    """The lent GPU machine has no diffusers: repflow and the whole bench must run without it."""
    script = (
        "import sys; sys.modules['diffusers'] = None\n"  # import diffusers now raises ImportError
        "from repflow.cli import main\n"
        f"assert main(['bench', 'gpu', '--tiny', '--out', {str(tmp_path)!r}]) == 0\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads((tmp_path / "gpu_bench.json").read_text())
    rows = {(r["case"], r["what"]): r for r in table["rows"]}
    assert (tmp_path / "gpu_bench.csv").read_text().startswith("case,what,batch,")
    trained = [r for r in rows.values() if r["what"] in ("train", "train+ckpt")]
    assert len(trained) == 6 and {r["case"] for r in trained} == {"SiT-T/2+REG", "JiT-T/16", "DiTDH-T/1"}
    for r in trained:
        assert r["images_per_s"] > 0 and r["mfu"] > 0 and r["host_syncs"] == 0, r
        split = sum(r[f"{s}_ms"] for s in STAGES)
        assert r["ms_per_iter"] / 4 < split < 3 * r["ms_per_iter"], r  # the stages cover the step (busy CPUs: loosely)
    compiled = [r for r in rows.values() if r["what"] == "train+compile"]
    assert len(compiled) == 3 and all(r["note"].startswith("skipped: --tiny") for r in compiled)
    samplers = [r for r in rows.values() if r["what"].startswith("sample")]
    assert [r["what"] for r in samplers] == ["sample heun10 cfg", "sample sde10 cfg", "sample mean1 (MeanFlow)"]
    assert all(r["images_per_s"] > 0 for r in samplers)
    assert samplers[2]["tflops"] > 0 and samplers[2]["note"] == "one network call per image"
    assert "MFU" in done.stdout and "written:" in done.stdout


def test_bench_gpu_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    from repflow.cli import main

    base = ["bench", "gpu", "--tiny", "--out", str(tmp_path)]
    cases_ = [
        (["--official", str(tmp_path)], "no models/sit.py, loss.py, samplers.py, train.py"),
        (["--only", "sit,vae"], "unknown part 'vae'"),
        (["--repeats", "0"], "--repeats must be"),
    ]
    for extra, needle in cases_:
        assert main([*base, *extra]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("repflow: error:") and needle in last, last
    assert not (tmp_path / "gpu_bench.json").exists()

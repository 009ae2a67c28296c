"""DDP/FSDP on CPU (gloo, 2 processes) against one process with the same global batch; sampling likewise."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repflow.cli import main as cli_main
from repflow.runtime.lookup import load_checkpoint
from repflow.train.loop import Trainer

from ..conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
ARGS = ("train.steps=4", "train.ckpt_every=2", "data.hflip=true", "train.grad_clip=0.5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(run: Path, stop: int, *overrides: str, nproc: int = 2) -> None:
    launch(nproc, "tests/train/dist_worker.py", str(run), str(stop), *overrides)


def launch(nproc: int, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-12000:]


def assert_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-4), k


@pytest.mark.slow
def test_ddp_matches_one_process_and_resumes_in_one_process(tmp_path):
    single = Trainer(tiny_config(*ARGS), tmp_path / "single")
    single.fit()

    torchrun(tmp_path / "ddp", 4, *ARGS)
    ddp = load_checkpoint(tmp_path / "ddp")
    assert ddp.state()["world_size"] == 2 and ddp.state()["step"] == 4
    assert_close(ddp.weights("model"), single.model.state_dict())
    assert_close(ddp.weights("ema-0.9"), single.ema.state_dict(0.9))

    # two processes for half the run, then one process resumes the 2-process checkpoint
    torchrun(tmp_path / "mixed", 2, *ARGS)
    resumed = Trainer(tiny_config(*ARGS), tmp_path / "mixed")
    assert resumed.step == 2
    resumed.fit()
    assert_close(resumed.model.state_dict(), single.model.state_dict())


@pytest.mark.slow
def test_ddp_with_accumulation_matches(tmp_path):
    single = Trainer(tiny_config(*ARGS), tmp_path / "single")
    single.fit()
    torchrun(tmp_path / "ddp", 4, *ARGS, "train.grad_accum=2")
    assert_close(load_checkpoint(tmp_path / "ddp").weights("model"), single.model.state_dict())


@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes_across_parallelism(tmp_path):
    single = Trainer(tiny_config(*ARGS), tmp_path / "single")
    single.fit()
    torchrun(tmp_path / "fsdp", 4, *ARGS, "train.parallel=fsdp")
    fsdp = load_checkpoint(tmp_path / "fsdp")
    assert fsdp.state()["parallel"] == "fsdp" and fsdp.state()["world_size"] == 2
    assert_close(fsdp.weights("model"), single.model.state_dict())
    assert_close(fsdp.weights("ema-0.9"), single.ema.state_dict(0.9))
    # a sharded checkpoint (full tensors on disk) resumes in one process, and a 1-process one under FSDP
    torchrun(tmp_path / "mixed", 2, *ARGS, "train.parallel=fsdp")
    resumed = Trainer(tiny_config(*ARGS), tmp_path / "mixed")
    resumed.fit()
    assert_close(resumed.model.state_dict(), single.model.state_dict())
    Trainer(tiny_config(*ARGS), tmp_path / "other").fit(stop_at=2)
    torchrun(tmp_path / "other", 4, *ARGS, "train.parallel=fsdp", "train.grad_accum=2")
    assert_close(load_checkpoint(tmp_path / "other").weights("model"), single.model.state_dict())


@pytest.mark.slow
def test_two_process_sampling_equals_one_process(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config("train.steps=2", "train.lr=0.05"), run).fit()  # a large step: distinct samples
    common = ["sample", str(run), "--num-samples", "7", "--sampler", "heun", "--steps", "3", "--cfg", "2", "--npz"]
    assert cli_main([*common, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    launch(2, "-m", "repflow.cli", *common, "--batch-size", "2", "--out", str(tmp_path / "two"))
    one, two = (np.load(tmp_path / d / "samples.npz")["arr_0"] for d in ("one", "two"))
    assert one.shape == (7, 8, 8, 3) and len({a.tobytes() for a in one}) == 7
    np.testing.assert_array_equal(one, two)

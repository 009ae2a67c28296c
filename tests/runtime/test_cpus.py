"""CPUs a process may use (affinity, cgroup quota) and how training splits them between threads and workers."""

import pytest

from repflow.runtime import cpus


@pytest.mark.parametrize(
    "files,expected",
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: Docker --cpus 1.5
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
        ({}, None),
    ],
)
def test_cgroup_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpus.cgroup_quota(tmp_path) == expected


def test_available_cpus_takes_the_smaller_of_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(cpus, "cgroup_quota", lambda: 2.5)
    assert cpus.available_cpus() == 3  # a 64-core host, a 2.5-CPU container
    monkeypatch.setattr(cpus, "cgroup_quota", lambda: None)
    assert cpus.available_cpus() == 64
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert cpus.cpus_per_process() == 8


def test_threads_auto_explicit_and_from_the_environment(monkeypatch):
    monkeypatch.setattr(cpus, "available_cpus", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpus.compute_threads("auto", 2) == (14, "auto")  # the CPUs the loader workers leave
    assert cpus.compute_threads("auto", 20) == (1, "auto")
    assert cpus.compute_threads(3, 2) == (3, "train.threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpus.compute_threads("auto", 0) == (1, "OMP_NUM_THREADS")


def test_workers_on_a_cpu_device_leave_the_cores_to_compute(tmp_path, monkeypatch):
    from PIL import Image

    import repflow.data.loader as loader_mod
    from repflow.data import ImageFolderDataset
    from repflow.data.loader import loader_workers

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    folder = ImageFolderDataset(tmp_path, 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(loader_mod, "cpu_count", lambda: 2)
    assert loader_workers(folder, "auto", "cpu") == 0 and loader_workers(folder, "auto", "cuda") == 2
    monkeypatch.setattr(loader_mod, "cpu_count", lambda: 32)
    assert loader_workers(folder, "auto", "cpu") == 4 and loader_workers(folder, -1, "cuda") == 8
    assert loader_workers(folder, 3, "cpu") == 3


def test_start_up_line_says_threads_and_workers(tmp_path, capsys):
    from repflow.cli import main

    from ..conftest import TINY

    assert main(["train", "demo-fashion-sit", *TINY, "train.steps=1", "--out", str(tmp_path / "r")]) == 0
    assert "1 threads (OMP_NUM_THREADS), 0 loader workers, of" in capsys.readouterr().out

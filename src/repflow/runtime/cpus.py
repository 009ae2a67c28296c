"""How many CPUs this process may use, and how training splits them between compute threads and loader workers.

A container or a batch job usually sees the whole host (``os.cpu_count()``) but may run on a few of its cores:
the affinity mask (``taskset``, SLURM) and the cgroup CPU quota (Docker ``--cpus``, Kubernetes limits) say how
many. Torch's default thread count is the host's core count, and loader workers decode images on the same
cores: on a shared 2-core machine the defaults ran 20-50x slower than one thread and no workers (issue 22).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs granted by the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), or
    None when there is no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        count = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cpus_per_process() -> int:
    """This process's share of the node: torchrun starts LOCAL_WORLD_SIZE processes on the same CPUs."""
    return max(1, available_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def compute_threads(setting: int | str, workers: int) -> tuple[int, str]:
    """(intra-op threads, why) for ``train.threads``: a number is taken as is; ``auto`` keeps OMP_NUM_THREADS
    when the user set it, else uses the CPUs left to this process after its loader workers."""
    if setting != "auto":
        return int(setting), "train.threads"
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
    return max(1, cpus_per_process() - workers), "auto"

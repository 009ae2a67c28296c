"""Counting host synchronisations: every place where the host waits for (or reads back) device results.

A training step that reads a loss with ``.item()``, branches on a tensor (``if loss > 0``), copies to the host
(``.cpu()``, ``.tolist()``, ``.numpy()``), calls ``torch.cuda.synchronize`` or runs an op whose output size
depends on the data (``nonzero``, ``masked_select``, ``unique``) stalls the GPU's queue once per call. The
counter sees all of these on any device (so CPU tests check a step that must run stall-free on a GPU):
reads of a tensor's value arrive as ``aten._local_scalar_dense`` at the dispatcher, data-dependent shapes as
their ops; host copies and explicit synchronisations are intercepted at the Python API.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops whose output size depends on the data: the host must read it back before allocating
DATA_DEPENDENT = ("nonzero", "masked_select", "unique", "_unique2", "unique_consecutive", "unique_dim")
READ_BACK = ("_local_scalar_dense",)  # .item(), bool(t), float(t), int(t), t.tolist() element reads
HOST_COPIES = ("cpu", "numpy", "tolist")


class _SyncOps(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in READ_BACK or name in DATA_DEPENDENT:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs() -> Iterator[Counter]:
    """Count host synchronisations inside the block: ``{what: calls}`` (empty when there are none)."""
    counts: Counter = Counter()
    saved = {name: getattr(torch.Tensor, name) for name in HOST_COPIES}

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return wrapper

    def synchronising(*args, **kwargs):
        counts["cuda.synchronize"] += 1
        return original_sync(*args, **kwargs)

    original_sync = torch.cuda.synchronize
    try:
        for name, method in saved.items():
            setattr(torch.Tensor, name, counting(name, method))
        torch.cuda.synchronize = synchronising
        with _SyncOps(counts):
            yield counts
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
        torch.cuda.synchronize = original_sync

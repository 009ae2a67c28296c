"""Where a training step's time goes: data, forward, backward, optimiser, EMA.

``TrainState.stage_done(name)`` is called as each stage of the step ends; the timer stamps it. On a GPU a stamp
is a CUDA event recorded on the stream (no host synchronisation: the step runs as it would in training, and
the events are read once, after the timed steps); on a CPU the work is synchronous and a stamp is the clock.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch

STAGES = ("data", "forward", "backward", "optimiser", "ema")


class StageTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[list[tuple[str, object]]] = []

    def _stamp(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start_step(self) -> None:
        self.steps.append([("start", self._stamp())])

    def __call__(self, stage: str) -> None:
        if self.steps:
            self.steps[-1].append((stage, self._stamp()))

    def _seconds(self, a, b) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def split(self) -> dict[str, float]:
        """Median over the recorded steps of the seconds spent in each stage (a stage that runs several times
        in a step, as forward and backward under gradient accumulation, is summed). Call after the device has
        finished the steps."""
        per_step = []
        for stamps in self.steps:
            spent: dict[str, float] = defaultdict(float)
            for (_, before), (stage, after) in zip(stamps, stamps[1:], strict=False):
                spent[stage] += self._seconds(before, after)
            per_step.append(spent)
        names = list(STAGES) + sorted({k for s in per_step for k in s} - set(STAGES))
        return {k: statistics.median([s.get(k, 0.0) for s in per_step]) for k in names} if per_step else {}

    def clear(self) -> None:
        self.steps.clear()

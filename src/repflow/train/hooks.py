"""Step hooks: work the training loop runs at chosen steps without knowing what it is (evaluation during
training is one, built by ``repflow.eval.online``). The loop checkpoints a hooked step first, so a hook works
from that checkpoint, never from the live training state; it runs every hook with the global RNG states saved
and restored, so a hook cannot change what training draws; and it logs what a hook returns into the step's
row of metrics.jsonl, TensorBoard and loss.png."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..config import Config
from ..runtime.checkpoint import checkpoint_dir
from ..runtime.distributed import DistInfo, broadcast_object
from .logging import RunLogger


@dataclass(frozen=True)
class HookRun:
    """What a hook learns about the run when training starts."""

    cfg: Config  # resolved (classes, input size, ... filled in)
    run_dir: Path
    dist: DistInfo
    generates: bool  # the method samples images (it has a denoiser and the codec decodes)


class StepHook(Protocol):
    #: the prefix of the values it returns ("eval" -> "eval/fid"), and its name on the progress bar
    name: str

    def start(self, run: HookRun) -> list[str]:
        """Check the settings against the run (one-line ConfigError if they cannot be honoured), prepare what
        every call shares; return lines for the start-up summary. Every process calls it."""
        ...

    def due(self, step: int) -> bool:
        """Whether the hook runs after ``step`` (steps done)."""
        ...

    def __call__(self, step: int, checkpoint: Path, say: Callable[[str], None]) -> dict[str, float]:
        """Run on every process at a due step, with that step's ``checkpoint``; return ``{"<name>/<key>": value}``
        (what the main process returns is logged). Calling it again for a step it finished returns the same
        values without redoing the work (a resumed run asks again for the step it resumed at)."""
        ...


def run_hooks(hooks: list[StepHook], step: int, run_dir: Path, dist: DistInfo, logger: RunLogger,
              resumed: bool = False) -> None:  # fmt: skip
    """Run ``hooks`` at ``step`` (every process; its checkpoint is written) and log what they return into the
    step's row. ``resumed``: asked again at the step a run resumed at; a hook whose values were logged before
    the interruption is skipped (rank 0 reads the log: it decides for all)."""
    for hook in hooks:
        if resumed and broadcast_object(logger.has_values(step, f"{hook.name}/"), dist):
            continue
        logger.busy(f"{hook.name} at step {step}")
        t0 = time.perf_counter()
        # training draws from its own generator, but the global RNGs matter too (dropout; checkpoints save them):
        # a hook that builds networks or samples must leave them as it found them
        with torch.random.fork_rng(devices=[dist.device] if dist.device.type == "cuda" else []):
            values = hook(step, checkpoint_dir(run_dir, step), logger.write)
        seconds = time.perf_counter() - t0
        logger.busy("")
        logger.exclude(seconds)
        logger.extend_row(step, values)
        shown = ", ".join(f"{k.split('/', 1)[-1]} {v:.4f}" for k, v in values.items())
        logger.write(f"step {step}: {hook.name} took {seconds:.1f} s: {shown}")


__all__ = ["HookRun", "StepHook", "run_hooks"]

"""Experiment trackers (``train.report_to``): TensorBoard and Weights & Biases, behind one small interface.

Both receive what ``metrics.jsonl`` holds (losses, learning rates, the monitor values, evaluation results), the
preview grids and the resolved config. A resumed run continues the same W&B run: its id is kept in
``<run>/wandb/run_id`` and passed back with ``resume="allow"``. W&B reads its usual environment (``WANDB_MODE=
offline``, ``WANDB_PROJECT``, ``WANDB_ENTITY``, the API key); the project defaults to ``repflow``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Protocol

from torch import Tensor


class Tracker(Protocol):
    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def image(self, tag: str, grid_chw: Tensor, step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    def __init__(self, run_dir: Path, start_step: int, config_yaml: str):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run logs the steps after its checkpoint again: TensorBoard drops its old copies of them
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        if config_yaml and not start_step:
            self.writer.add_text("config", "```yaml\n" + config_yaml + "```", 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, grid_chw: Tensor, step: int) -> None:
        self.writer.add_image(tag, grid_chw, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, name: str, config: dict):
        from .._compat import require
        from ..errors import ConfigError

        try:
            wandb = require("wandb", extra="track")
        except ImportError as err:
            raise ConfigError(f"train.report_to names wandb, which is not installed: {err}") from err
        self.wandb = wandb
        id_file = run_dir / "wandb" / "run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "repflow", name=name, id=run_id,
                              resume="allow", dir=str(run_dir), config=config)  # fmt: skip

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def image(self, tag: str, grid_chw: Tensor, step: int) -> None:
        hwc = grid_chw.detach().cpu().permute(1, 2, 0).numpy()
        self.run.log({tag: self.wandb.Image(hwc)}, step=step)

    def close(self) -> None:
        self.run.finish()


def build_trackers(report_to: tuple[str, ...], run_dir: Path, start_step: int, cfg=None) -> list[Tracker]:
    """The trackers ``report_to`` names (``none``: only metrics.jsonl and the progress bar); ``cfg``: the resolved
    config they record."""
    from ..config import to_dict, to_yaml

    out: list[Tracker] = []
    if "tensorboard" in report_to:
        with contextlib.suppress(ImportError):  # TensorBoard is optional: metrics.jsonl still holds everything
            out.append(TensorBoardTracker(run_dir, start_step, to_yaml(cfg) if cfg is not None else ""))
    if "wandb" in report_to:
        name = (cfg.name if cfg is not None else "") or run_dir.name
        out.append(WandbTracker(run_dir, name, to_dict(cfg) if cfg is not None else {}))
    return out

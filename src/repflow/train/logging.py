"""Run logging: console progress bar, TensorBoard scalars and images, metrics.jsonl, the loss plot."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


def drop_rows_after(metrics_file: Path, step: int) -> None:
    """Keep the rows of metrics.jsonl up to ``step`` (the checkpoint a run resumes from): rows a killed run logged
    after its last checkpoint are logged again when it resumes, and a row torn by the kill is dropped too."""
    if not metrics_file.is_file():
        return
    lines = metrics_file.read_text().splitlines()
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) < len(lines):
        tmp = metrics_file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(metrics_file)


def _row_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # torn or foreign: dropped


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.bar = None
        self.tb = None
        self._t0, self._step0 = time.perf_counter(), start_step
        if not enabled:
            return
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5 if tty else 10.0,
        )
        try:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run logs the steps after its checkpoint again: TensorBoard drops its old copies of them
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # TensorBoard is optional
            self.tb = None
        drop_rows_after(self.run_dir / "metrics.jsonl", start_step)
        self.metrics = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, step: int, scalars: dict[str, float], images_per_step: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = (step - self._step0) * images_per_step / max(now - self._t0, 1e-9)
        self._t0, self._step0 = now, step
        scalars = {**scalars, "img_per_s": rate}
        self.bar.set_postfix(loss=f"{scalars.get('loss', float('nan')):.4f}", img_s=f"{rate:.0f}", refresh=False)
        self.metrics.write(json.dumps({"step": step, **scalars}) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, step)

    def image(self, tag: str, grid_chw, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, grid_chw, step)

    def write(self, message: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.metrics.close()


LOGGED_NOT_LOSSES = ("step", "lr", "img_per_s", "grad_norm")
MONITORED = ("erank",)  # what a method monitors about its model (DSD's latent rank): shown right after the totals


def loss_panels(rows: list[dict]) -> dict[str, tuple[list, list, bool]]:
    """key -> (steps, values, log scale?) for every logged loss: the totals first, then the terms (<= 8)."""
    if not rows:
        return {}
    keys = [k for k in rows[-1] if not k.startswith(LOGGED_NOT_LOSSES)]
    panels = {}
    order = lambda k: (not k.startswith("loss"), not k.startswith(MONITORED), k)  # noqa: E731
    for key in sorted(keys, key=order)[:8]:
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] == r[key]]
        if pts:
            steps, vals = (list(v) for v in zip(*pts, strict=True))
            panels[key] = (steps, vals, min(vals) > 0)
    return panels


def plot_loss(metrics_file: Path, out_png: Path) -> Path | None:
    """One panel per logged loss (the total first, then each term), against steps. A panel is log-scaled when
    its values stay positive and linear otherwise, so a term that goes negative (REPA's -cos, the dispersive
    loss) stays visible, and so does the total it pulls below zero."""
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    panels = loss_panels(rows)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(panels), 4)
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), dpi=110, squeeze=False)
    for ax, (key, (steps, vals, log)) in zip(axes.flat, panels.items(), strict=False):
        ax.plot(steps, vals, lw=1.2, color="C0" if key.startswith("loss") else "C1")
        if log:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("repflow training losses (mean over each log interval)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png

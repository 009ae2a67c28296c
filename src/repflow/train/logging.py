"""Run logging: console progress bar, metrics.jsonl, the trackers (TensorBoard, W&B), the loss plot."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .trackers import build_trackers


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


def _last_row(path: Path) -> tuple[dict, int, int]:
    """(the last row of metrics.jsonl, its byte offset, the file's length); the row is {} when there is none."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        end = f.tell()
        f.seek(max(0, end - 65536))  # a row is a few hundred bytes
        tail = f.read()
    body = tail.rstrip(b"\n")
    start = body.rfind(b"\n") + 1
    try:
        row = json.loads(body[start:])
    except ValueError:
        row = None
    return (row, end - len(tail) + start, end) if isinstance(row, dict) else ({}, end, end)


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True,
                 report_to: tuple[str, ...] = ("tensorboard",), config=None):  # fmt: skip
        """``report_to``: the trackers (``train.report_to``) that get every logged value, the preview grids and
        ``config`` (the resolved one)."""
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.bar = None
        self.trackers: list = []
        self._t0, self._step0 = time.perf_counter(), start_step
        self._shown_at = 0.0  # when the bar last showed a step's loss
        self.postfix: dict[str, str] = {}  # on the progress bar: the latest loss and speed,
        self.shown: dict[str, str] = {}  # then the latest evaluation
        if not enabled:
            return
        self.trackers = build_trackers(report_to, self.run_dir, start_step, config)  # first: a failure is one line
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5 if tty else 10.0,
        )
        drop_rows_after(self.run_dir / "metrics.jsonl", start_step)
        self.metrics = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed in close())

    def step(self, n: int = 1, loss=None) -> None:
        """Advance the bar; ``loss`` (this step's, a tensor) is shown as the bar redraws, so it moves between
        log steps: read at most once per redraw interval, one host sync then, none on the other steps."""
        if self.bar is None:
            return
        now = time.perf_counter()
        if loss is not None and now - self._shown_at >= self.bar.mininterval:
            self._shown_at = now
            self.postfix["loss"] = f"{float(loss):.4f}"
            self.bar.set_postfix({**self.postfix, **self.shown}, refresh=False)
        self.bar.update(n)

    def log(self, step: int, scalars: dict[str, float], images_per_step: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = (step - self._step0) * images_per_step / max(now - self._t0, 1e-9)
        self._t0, self._step0 = now, step
        scalars = {**scalars, "img_per_s": rate}
        self.postfix = {"loss": f"{scalars.get('loss', float('nan')):.4f}", "img_s": f"{rate:.0f}"}
        self.bar.set_postfix({**self.postfix, **self.shown}, refresh=False)
        self.metrics.write(json.dumps({"step": step, **scalars}) + "\n")
        self.metrics.flush()
        for tracker in self.trackers:
            tracker.scalars({f"train/{k}": v for k, v in scalars.items()}, step)

    def extend_row(self, step: int, values: dict[str, float]) -> None:
        """Add ``values`` (already named ``<group>/<key>``) to the row of ``step``, the last of metrics.jsonl
        (evaluation results, which come after the step's losses were written), or append a row for them if the
        last row is another step's (a run killed after the checkpoint, before the row was written)."""
        if not self.enabled or not values:
            return
        self.metrics.flush()
        last, start, end = _last_row(self.run_dir / "metrics.jsonl")
        mine = last.get("step") == step
        row = {**last, **values} if mine else {"step": step, **values}
        with open(self.run_dir / "metrics.jsonl", "r+b") as f:  # rewrite only the last row, in place
            f.seek(start if mine else end)
            f.truncate()
            f.write((json.dumps(row) + "\n").encode())
        for tracker in self.trackers:
            tracker.scalars(values, step)
        self.shown.update({k.split("/", 1)[-1]: f"{v:.4g}" for k, v in values.items()})
        self.bar.set_postfix({**self.postfix, **self.shown}, refresh=False)

    def has_values(self, step: int, prefix: str) -> bool:
        """Whether the last row of metrics.jsonl is ``step``'s and holds a value named ``<prefix>...``."""
        if not self.enabled:
            return False
        self.metrics.flush()
        last, _, _ = _last_row(self.run_dir / "metrics.jsonl")
        return last.get("step") == step and any(k.startswith(prefix) for k in last)

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` spent on something else than training (an evaluation) out of the next img/s."""
        self._t0 += seconds

    def busy(self, what: str) -> None:
        """Say on the progress bar what the loop is doing besides training ("" when it trains again)."""
        if self.bar is not None:
            self.bar.set_description(what, refresh=True)

    def image(self, tag: str, grid_chw, step: int) -> None:
        if self.enabled:
            for tracker in self.trackers:
                tracker.image(tag, grid_chw, step)

    def write(self, message: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        for tracker in self.trackers:
            tracker.close()
        self.metrics.close()


LOGGED_NOT_LOSSES = ("step", "lr", "img_per_s", "grad_norm")
MONITORED = ("erank",)  # what a method monitors about its model (DSD's latent rank): shown right after the totals


def loss_panels(rows: list[dict]) -> dict[str, tuple[list, list, bool]]:
    """key -> (steps, values, log scale?) for every logged loss: the totals first, then the terms (<= 8), then
    the values of step hooks (named ``<group>/<key>``: ``eval/fid``), which only some rows hold (<= 4)."""
    is_loss = lambda k: "/" not in k and not k.startswith(LOGGED_NOT_LOSSES)  # noqa: E731
    last = next((r for r in reversed(rows) if any(map(is_loss, r))), {})  # an evaluation-only row has no loss
    order = lambda k: (not k.startswith("loss"), not k.startswith(MONITORED), k)  # noqa: E731
    keys = sorted(filter(is_loss, last), key=order)[:8]
    keys += list(dict.fromkeys(k for r in rows for k in r if "/" in k))[:4]
    panels = {}
    for key in keys:
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
        hooked = "/" in key  # evaluated at a few steps: points joined by lines
        ax.plot(steps, vals, lw=1.2, color="C2" if hooked else "C0" if key.startswith("loss") else "C1",
                marker="o" if hooked else None, ms=3)  # fmt: skip
        if log:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("repflow training losses (mean over each log interval)"
                 + (" and evaluations" if any("/" in k for k in panels) else ""), fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png

"""One logged value of several runs against steps, in one figure and one CSV (for ablations such as DSD's
effective rank: the naive run against each fix).

    python benchmarks/plot_runs.py runs/dsd-naive runs/dsd-sg ... --key erank --out benchmarks/results/dsd-erank
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def logged(run: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key`` in a run's metrics.jsonl; a missing file or key is one clear line."""
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"plot_runs: {run} has no metrics.jsonl (is it a repflow run directory?)")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    points = [(r["step"], r[key]) for r in rows if key in r]
    if not points:
        raise SystemExit(f"plot_runs: {metrics} never logged {key!r}")
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--key", default="erank", help="the logged value to draw")
    ap.add_argument("--labels", nargs="*", help="one per run (default: the folder names)")
    ap.add_argument("--log", action="store_true", help="log-scaled y axis")
    ap.add_argument("--title", default="", help="the figure's title")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.csv and OUT.png")
    args = ap.parse_args()
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"plot_runs: {len(labels)} labels for {len(args.runs)} runs")
    series = {label: logged(run, args.key) for label, run in zip(labels, args.runs, strict=True)}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "step", args.key])
        for label, points in series.items():
            writer.writerows([label, step, f"{value:.4f}"] for step, value in points)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, points in series.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, lw=1.5, label=label)
    if args.log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(args.key)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if args.title:
        ax.set_title(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"))
    for label, points in series.items():
        (first_step, first), (last_step, last) = points[0], points[-1]
        print(f"{label}: {args.key} {first:.3f} at step {first_step} -> {last:.3f} at step {last_step}")


if __name__ == "__main__":
    main()

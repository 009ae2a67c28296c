"""The picture of a sweep: the metric against the axis with the most values, one line per setting of the others."""

from __future__ import annotations

import itertools
from pathlib import Path

LABELS = {"cfg": "guidance scale", "cfg_interval": "guidance interval", "steps": "steps", "sampler": "sampler",
          "ema": "EMA"}  # fmt: skip


def _value(row: dict, axis: str):
    if axis == "cfg_interval":
        return (float(row["interval_lo"]), float(row["interval_hi"]))
    return {"cfg": float, "steps": int}.get(axis, lambda v: v if v == "raw" else float(v))(row[axis])


def _shown(axis: str, value) -> str:
    if axis == "cfg_interval":
        return f"[{value[0]:g}, {value[1]:g}]"
    return value if isinstance(value, str) else f"{value:g}"


def plot_sweep(rows: list[dict], values: dict[str, list], metric: str, best: dict, png: Path,
               lower: bool = True) -> Path:  # fmt: skip
    """Lines of ``metric`` over the longest axis (categorical positions, so intervals and samplers work too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_axis = max(values, key=lambda a: (len(values[a]), a == "cfg"))  # ties: the guidance scale
    others = [a for a in values if a != x_axis and len(values[a]) > 1]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    xs = values[x_axis]
    for combo in itertools.product(*(values[a] for a in others)):
        fixed = dict(zip(others, combo, strict=True))
        pts = [(i, float(r[metric])) for i, x in enumerate(xs) for r in rows
               if _value(r, x_axis) == x and all(_value(r, a) == v for a, v in fixed.items())]  # fmt: skip
        label = ", ".join(f"{LABELS[a]} {_shown(a, v)}" for a, v in fixed.items()) or None
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    bx = next(i for i, x in enumerate(xs) if _value(best, x_axis) == x)
    ax.plot([bx], [float(best[metric])], marker="*", ms=16, color="gold", markeredgecolor="k", ls="none",
            label="best", zorder=5)  # fmt: skip
    ax.set_xticks(range(len(xs)), [_shown(x_axis, x) for x in xs])
    ax.set_xlabel(LABELS[x_axis])
    ax.set_ylabel(f"{metric.upper()} ({'lower' if lower else 'higher'} is better)")
    r = rows[0]
    ax.set_title(f"{r['checkpoint']}: {metric.upper()}-{r['num_samples']} vs {r['reference']} ({r['ref_count']}), "
                 f"seed {r['seed']}", fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png

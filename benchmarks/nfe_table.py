"""FID against the number of network evaluations (NFE) for several samplers on one run: the few-step table.

    python benchmarks/nfe_table.py RUN [--nfe 1,2,4,8,16,50] [--samplers euler,heun,dpmpp_2m]
        [--num-samples 1000] [--ref REF] [--ref-count N] [--out nfe.csv] [--cfg W --cfg-interval LO,HI ...]

Euler and DPM-Solver++(2M) take one evaluation per step (steps = NFE); Heun takes 2 N - 1 for N steps (no
corrector on its last step), so it gets the most steps that fit the budget and the table says what it used.
Every cell goes through ``repflow.evaluate`` with the run's own sampling settings except sampler and steps:
the samples land in the run's ``eval/`` folders, so an interrupted table resumes, and the reference
statistics (default: the run's training data) are computed once. A classifier-free guided evaluation is one
network call on twice the batch, so NFE counts calls too.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from repflow.commands.options import add_sampling_args, int_list, sampling_changes

NFE_PER_STEP = {"euler": 1, "dpmpp_2m": 1, "mean": 1}  # heun: 2 per step but the last; mean: MeanFlow jumps


def write_csv(out: Path, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sampler", "budget", "steps", "nfe", "fid"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)


def steps_for(sampler: str, nfe: int) -> tuple[int, int]:
    """(steps, the NFE they cost) for a budget of ``nfe`` evaluations."""
    if sampler == "heun":
        steps = max(1, (nfe + 1) // 2)
        return steps, 2 * steps - 1
    if sampler not in NFE_PER_STEP:
        raise ValueError(f"sampler {sampler!r} has no fixed NFE per step; choose from heun, {', '.join(NFE_PER_STEP)}")
    return nfe, nfe


def table(rows: list[dict], budgets: list[int], samplers: list[str]) -> str:
    """Markdown: one row per sampler, one column per NFE budget; a cell is FID (and the NFE used if less)."""
    cells = {(r["sampler"], r["budget"]): r for r in rows}
    head = "| sampler | " + " | ".join(f"NFE {n}" for n in budgets) + " |"
    lines = [head, "|---|" + "---:|" * len(budgets)]
    for s in samplers:
        shown = []
        for n in budgets:
            r = cells[(s, n)]
            shown.append(f"{r['fid']:.1f}" + (f" ({r['nfe']})" if r["nfe"] != n else ""))
        lines.append(f"| {s} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    import repflow

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory or checkpoint")
    ap.add_argument("--nfe", type=int_list, default=[1, 2, 4, 8, 16, 50], help="evaluation budgets")
    ap.add_argument("--samplers", default="euler,heun,dpmpp_2m")
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--ref", default="", help="reference (default: the run's training data)")
    ap.add_argument("--ref-count", type=int, default=50000)
    ap.add_argument("--out", type=Path, help="CSV file (default: <run>/eval/nfe.csv)")
    add_sampling_args(ap, choose=False)  # changes to the run's sampling settings: --cfg, --shift, --ema ...
    args = ap.parse_args(argv)
    if args.sampler is not None or args.steps is not None:
        ap.error("--samplers and --nfe choose the samplers and their steps; --sampler and --steps are not used")
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    budgets = sorted(set(args.nfe))
    if not samplers or not budgets or min(budgets) < 1:
        ap.error("give at least one sampler and NFE budgets >= 1")
    for s in samplers:
        steps_for(s, 1)  # an unusable sampler fails before any sampling
    changes = sampling_changes(args)
    out = args.out or Path(args.run) / "eval" / "nfe.csv"
    rows = []
    for sampler in samplers:
        for budget in budgets:
            steps, nfe = steps_for(sampler, budget)
            result = repflow.evaluate(args.run, ref=args.ref, num_samples=args.num_samples, metrics="fid",
                                      ref_count=args.ref_count, ema=args.ema, sampler=sampler, steps=steps,
                                      **changes)  # fmt: skip
            rows.append({"sampler": sampler, "budget": budget, "steps": steps, "nfe": nfe, "fid": result["fid"]})
            print(f"{sampler:>9} {steps:>3} steps, NFE {nfe:>3}: FID-{args.num_samples} {result['fid']:.2f}",
                  file=sys.stderr)  # fmt: skip
            write_csv(out, rows)  # after every cell: an interrupted table keeps what it measured
    print(f"FID-{args.num_samples} against NFE ({out}):\n{table(rows, budgets, samplers)}")
    return rows


if __name__ == "__main__":
    main()

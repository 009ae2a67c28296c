#!/usr/bin/env bash
# MeanFlow vs flow matching on Fashion-MNIST 32x32 (CPU): the flow demo (SiT-T/8, 1000 steps of 64, seed 0) and the
# MeanFlow demo on the same images; FID-1000 against 2,000 training images of MeanFlow at 1 and 2 NFE and of the flow
# model at 1, 2, 4, 8 NFE (Euler) and 49 (Heun, 25 steps), each through benchmarks/nfe_table.py; one CSV, one figure
# (FID against NFE) and one grid of samples (a row per sampler and budget: the first 20 FID samples, two per class).
#   bash benchmarks/meanflow_fashion.sh [OUT_DIR] [STEPS]
# Finished runs and evaluations are kept, so the script can be rerun after an interruption.
DEFAULT_OUT=/tmp/repflow-meanflow-fashion
# shellcheck source=benchmarks/fashion_runs.sh
source "$(dirname "$0")/fashion_runs.sh"
BENCH=$(dirname "$0")
EVAL=(--num-samples 1000 --ref-count 2000)
declare -A PRESET=([meanflow]=demo-fashion-meanflow [flow]=demo-fashion-sit)
for name in meanflow flow; do
    trained "$OUT/$name" "$STEPS" || repflow train "${PRESET[$name]}" "train.steps=$STEPS" "train.ckpt_every=$STEPS" \
        train.sample_every=0 --out "$OUT/$name"
done
# every cell's samples and FID are kept in the run's eval/ folders: a rerun only computes what is missing
$PY "$BENCH/nfe_table.py" "$OUT/meanflow" --samplers mean --nfe 1,2 "${EVAL[@]}"
$PY "$BENCH/nfe_table.py" "$OUT/flow" --samplers euler --nfe 1,2,4,8 "${EVAL[@]}"
$PY "$BENCH/nfe_table.py" "$OUT/flow" --samplers heun --nfe 50 "${EVAL[@]}" --out "$OUT/flow/eval/nfe-heun.csv"

$PY - "$OUT" "$STEPS" <<'PYEOF'
import csv, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image, ImageDraw
out, steps = Path(sys.argv[1]), int(sys.argv[2])
rows = []
for run, table in (("meanflow", "nfe.csv"), ("flow", "nfe.csv"), ("flow", "nfe-heun.csv")):
    for r in csv.DictReader(open(out / run / "eval" / table)):
        rows.append({"run": run, "sampler": r["sampler"], "steps": int(r["steps"]), "nfe": int(r["nfe"]),
                     "fid": float(r["fid"])})
with open(out / "meanflow-fashion.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["run", "sampler", "steps", "nfe", "fid"])
    w.writeheader()
    w.writerows(rows)
fig, ax = plt.subplots(figsize=(6, 3.4))
for (run, sampler), style in {("meanflow", "mean"): "o-", ("flow", "euler"): "s--", ("flow", "heun"): "^:"}.items():
    pts = sorted((r["nfe"], r["fid"]) for r in rows if r["run"] == run and r["sampler"] == sampler)
    ax.plot(*zip(*pts), style, label=f"{run} ({sampler})")
ax.set_xscale("log")
ax.set_xlabel("network evaluations (NFE; a guided flow call is one call on twice the batch)")
ax.set_ylabel("FID-1000")
ax.set_title(f"Fashion-MNIST, SiT-T/8, {steps} steps of 64 images each", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "meanflow-fashion.png", dpi=120)
size, pad, grid_rows = 32, 150, []
for r in rows:
    folder = next((out / r["run"] / "eval").glob(f"ckpt-*-{r['sampler']}{r['steps']}-cfg*-seed0"))
    grid_rows.append((f"{r['run']} {r['sampler']} NFE {r['nfe']}",
                      [Image.open(folder / f"{i:06d}.png").convert("L") for i in range(20)]))
grid = Image.new("L", (pad + 20 * size, len(grid_rows) * size), 255)
draw = ImageDraw.Draw(grid)
for k, (label, images) in enumerate(grid_rows):
    draw.text((4, k * size + 10), label, fill=0)
    for i, image in enumerate(images):
        grid.paste(image, (pad + i * size, k * size))
grid.save(out / "meanflow-fashion-samples.png")
print((out / "meanflow-fashion.csv").read_text())
PYEOF

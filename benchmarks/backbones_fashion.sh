#!/usr/bin/env bash
# SiT vs LightningDiT vs DDT on Fashion-MNIST (CPU, the tiny offline encoder), each with REPA, with iREPA (conv
# projector + spatial z-score) and with REG (+ REPA): the same images seen by every run (same steps, batch, seed),
# FID-1000 against 2,000 training images (the demo presets' Heun sampler, 50 steps, EMA, no guidance), one CSV, one
# bar chart and one grid of samples (a row per run: the first 20 of its FID samples, two per class).
#   bash benchmarks/backbones_fashion.sh [OUT_DIR] [STEPS]
#   RUNS="sit-repa ddt-irepa" bash benchmarks/backbones_fashion.sh ...   # only these runs (two lanes in parallel)
# Finished runs and evaluations are kept, so the script can be rerun after an interruption (or by a second lane).
DEFAULT_OUT=/tmp/repflow-backbones-fashion
# shellcheck source=benchmarks/fashion_runs.sh
source "$(dirname "$0")/fashion_runs.sh"

declare -A FAMILY=(
    [sit]=""
    [ldit]="model.family=lightningdit model.arch=LightningDiT-T/8"
    [ddt]="model.family=ddt model.arch=DDT-T/8"  # 4 encoder blocks + 2 decoder blocks
)
declare -A ALIGN=(
    [repa]="demo-fashion-repa"
    [irepa]="demo-fashion-repa repa.projector=conv repa.spatial_norm=zscore"
    [reg]="demo-fashion-reg"
)
ALL="sit-repa sit-irepa sit-reg ldit-repa ldit-irepa ldit-reg ddt-repa ddt-irepa ddt-reg"
for name in ${RUNS:-$ALL}; do
    family=${name%-*} align=${name#*-}
    # shellcheck disable=SC2086
    trained "$OUT/$name" "$STEPS" || repflow train ${ALIGN[$align]} ${FAMILY[$family]} "train.steps=$STEPS" \
        "train.ckpt_every=$STEPS" train.sample_every=0 --out "$OUT/$name"
    [ -f "$OUT/$name/fid.json" ] || repflow eval "$OUT/$name" --num-samples 1000 --metrics fid --ref-count 2000 \
        --sampling-steps 50 --cfg 1 --json "$OUT/$name/fid.json"
done

# the table and the figure, once every run has its FID (a lane that finishes first leaves this to the other)
for name in $ALL; do [ -f "$OUT/$name/fid.json" ] || exit 0; done
$PY - "$OUT" "$STEPS" $ALL <<'PYEOF'
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
out, steps, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
label = {"sit": "SiT-T/8", "ldit": "LightningDiT-T/8", "ddt": "DDT-T/8 (4+2)"}
align = {"repa": "REPA", "irepa": "iREPA", "reg": "REG + REPA"}
fid = {n: json.load(open(out / n / "fid.json"))["metrics"]["fid"] for n in names}
with open(out / "backbones-fashion.csv", "w") as f:
    f.write("backbone,alignment,steps,fid1000\n")
    for n in names:
        fam, al = n.split("-")
        f.write(f"{label[fam]},{align[al]},{steps},{fid[n]:.1f}\n")
fig, ax = plt.subplots(figsize=(7, 3.2))
families, aligns = list(label), list(align)
for j, al in enumerate(aligns):
    xs = [i + (j - 1) * 0.27 for i in range(len(families))]
    ys = [fid[f"{fam}-{al}"] for fam in families]
    bars = ax.bar(xs, ys, width=0.26, label=align[al])
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
ax.set_xticks(range(len(families)), [label[f] for f in families])
ax.set_ylabel("FID-1000 (lower is better)")
ax.set_title(f"Fashion-MNIST, {steps} steps of 64 images, Heun 50 steps, no guidance", fontsize=9)
ax.legend(fontsize=8, loc="lower right")
ax.set_ylim(0, 1.15 * max(fid.values()))
fig.tight_layout()
fig.savefig(out / "backbones-fashion.png", dpi=120)
from PIL import Image, ImageDraw
rows, size, pad = [], 32, 150
for n in names:
    folder = next(p for p in sorted((out / n / "eval").iterdir()) if "reuse" not in p.name)
    rows.append((n, [Image.open(folder / f"{i:06d}.png").convert("L") for i in range(20)]))
grid = Image.new("L", (pad + 20 * size, len(rows) * size), 255)
draw = ImageDraw.Draw(grid)
for r, (n, images) in enumerate(rows):
    fam, al = n.split("-")
    draw.text((4, r * size + 10), f"{label[fam].split(' ')[0]} {align[al]}", fill=0)
    for i, image in enumerate(images):
        grid.paste(image, (pad + i * size, r * size))
grid.save(out / "backbones-fashion-samples.png")
print((out / "backbones-fashion.csv").read_text())
PYEOF

#!/usr/bin/env bash
# RAE vs RAEv2 on Fashion-MNIST with the tiny offline encoder (CPU), and RAE's time-shift ablation, end to end:
# stage 1 (a ViT-T decoder per latent), latent statistics, stage 2 (DiT^DH-T, the same images seen by every run),
# FID-1000 against 2,000 training images for each sampling setting, one CSV and the sample grids.
#   bash benchmarks/rae_fashion.sh [OUT_DIR] [STAGE2_STEPS]
#   SAMPLINGS="none ig1.78" bash benchmarks/rae_fashion.sh ...   # only these sampling settings (default: all three)
# Finished runs and evaluations are kept, so the script can be rerun after an interruption.
DEFAULT_OUT=/tmp/repflow-rae-fashion
# shellcheck source=benchmarks/fashion_runs.sh
source "$(dirname "$0")/fashion_runs.sh"

# stage 1: one decoder per latent (RAE: the last block; RAEv2: blocks 1-3 + the token mean)
echo "latent,psnr_db,rfid1000" > "$OUT/rae-fashion-decoders.csv"
for v in rae raev2; do
    trained "$OUT/$v-dec" 1200 || repflow train demo-fashion-$v-decoder --out "$OUT/$v-dec"
    [ -f "$OUT/$v-stats.safetensors" ] || repflow rae stats demo-fashion-$v-ditdh --out "$OUT/$v-stats.safetensors"
    [ -f "$OUT/$v-dec/recon.json" ] || repflow eval "$OUT/$v-dec" --num-samples 1000 --metrics fid --ref-count 2000 \
        --json "$OUT/$v-dec/recon.json"
    $PY - "$OUT/$v-dec/recon.json" "$v" >> "$OUT/rae-fashion-decoders.csv" <<'PYEOF'
import json, sys
record, name = json.load(open(sys.argv[1])), sys.argv[2]
psnr = record["psnr"]
print(f"{name},{psnr:.2f},{record['metrics']['fid']:.1f}")
PYEOF
done

# stage 2: RAE (with and without the dimension shift) and RAEv2, the same steps, batch and seed
declare -A RUNS=(
    [rae]="demo-fashion-rae-ditdh codec.decoder=$OUT/rae-dec codec.stats=$OUT/rae-stats.safetensors"
    [rae-noshift]="demo-fashion-rae-ditdh codec.decoder=$OUT/rae-dec codec.stats=$OUT/rae-stats.safetensors flow.time.shift_base_dim=0"
    [raev2]="demo-fashion-raev2-ditdh codec.decoder=$OUT/raev2-dec codec.stats=$OUT/raev2-stats.safetensors"
)
for name in rae rae-noshift raev2; do
    # shellcheck disable=SC2086
    trained "$OUT/$name" "$STEPS" || repflow train ${RUNS[$name]} "train.steps=$STEPS" train.warmup_steps=50 \
        "train.ckpt_every=$STEPS" --out "$OUT/$name"
done

# FID-1000 of each run and sampling setting (Euler 50 on the run's grid, EMA, balanced classes)
declare -A SETTINGS=(
    [none]="--cfg 1 --internal-guidance 1"  # the RAEv2 preset samples with internal guidance by default
    [cfg1.5]="--cfg 1.5"
    [ig1.78]="--cfg 1 --internal-guidance 1.78 --internal-interval 0.1,1"
)
CSV="$OUT/rae-fashion.csv"
echo "run,latent,recipe,shift,sampling,fid1000" > "$CSV"
for name in rae rae-noshift raev2; do
    for setting in ${SAMPLINGS:-none cfg1.5 ig1.78}; do
        [ "$setting" = ig1.78 ] && [ "$name" != raev2 ] && continue  # internal guidance needs RAEv2's output
        json="$OUT/$name/fid-$setting.json"
        # shellcheck disable=SC2086
        [ -f "$json" ] || repflow eval "$OUT/$name" --num-samples 1000 --metrics fid --ref-count 2000 \
            --sampling-steps 50 ${SETTINGS[$setting]} --json "$json"
        $PY - "$json" "$name" "$setting" >> "$CSV" <<'PYEOF'
import json, sys
path, name, setting = sys.argv[1:]
fid = json.load(open(path))["metrics"]["fid"]
latent = "blocks 1-3 + token mean" if name == "raev2" else "last block"
recipe = "RAEv2 (in-context DiT^DH, x-pred, internal output, Muon)" if name == "raev2" else "RAE (DiT^DH, v-pred, AdamW)"
shift = "none" if name == "rae-noshift" else "dimension"
print(f"{name},{latent},{recipe},{shift},{setting},{fid:.1f}")
PYEOF
    done
done
cat "$CSV"

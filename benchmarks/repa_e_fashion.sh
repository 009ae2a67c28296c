#!/usr/bin/env bash
# REPA-E vs frozen-VAE REPA on Fashion-MNIST 32x32 (CPU), the paper's E2E-tune protocol at toy scale, with the
# shipped tiny kl-f4 VAE (8x8x4 latents), SiT-T/2 and the tiny offline encoder:
#   vae         the VAE trained from scratch with its own losses only (L1, KL, PatchGAN; REPA weight 0 into the VAE;
#               a SiT rides along on stop-gradient latents and is not used): the "before" VAE
#   repa-e      REPA-E end to end from the before VAE: VAE + SiT + REPA into both (E2E-tune)
#   frozen      SiT + REPA on the before VAE, frozen
#   frozen-e2e  SiT + REPA on the tuned VAE exported from repa-e, frozen (the paper's recommended second stage)
# The three diffusion runs see the same images (STEPS steps of 64, seed 0). FID-1000 against 2,000 training images
# (Heun 50 steps, EMA, no guidance) and rFID + PSNR of the VAE before and after on 1,000 test images; one CSV.
#   bash benchmarks/repa_e_fashion.sh [OUT_DIR] [STEPS]      VAE_STEPS=600 (the before VAE's training)
DEFAULT_OUT=/tmp/repflow-repa-e-fashion
# shellcheck source=benchmarks/fashion_runs.sh
source "$(dirname "$0")/fashion_runs.sh"
VAE_STEPS=${VAE_STEPS:-600}
ONCE=("train.ckpt_every=$STEPS" train.sample_every=0)
trained "$OUT/vae" "$VAE_STEPS" || repflow train demo-fashion-repa-e method.align_weight=0 "train.steps=$VAE_STEPS" \
    "train.ckpt_every=$VAE_STEPS" train.sample_every=0 --out "$OUT/vae"
[ -f "$OUT/vae-before/config.json" ] || repflow export "$OUT/vae" --vae "$OUT/vae-before"
trained "$OUT/repa-e" "$STEPS" || repflow train demo-fashion-repa-e method.vae_init=pretrained \
    "codec.path=$OUT/vae-before" "train.steps=$STEPS" "${ONCE[@]}" --out "$OUT/repa-e"
[ -f "$OUT/vae-after/config.json" ] || repflow export "$OUT/repa-e" --vae "$OUT/vae-after"
FROZEN=(demo-fashion-repa codec.kind=vae model.arch=SiT-T/2 data.hflip=false "train.steps=$STEPS" "${ONCE[@]}")
trained "$OUT/frozen" "$STEPS" || repflow train "${FROZEN[@]}" "codec.path=$OUT/vae-before" --out "$OUT/frozen"
trained "$OUT/frozen-e2e" "$STEPS" || repflow train "${FROZEN[@]}" "codec.path=$OUT/vae-after" --out "$OUT/frozen-e2e"
for name in repa-e frozen frozen-e2e; do
    [ -f "$OUT/$name/fid.json" ] || repflow eval "$OUT/$name" --num-samples 1000 --metrics fid --ref-count 2000 \
        --sampling-steps 50 --cfg 1 --json "$OUT/$name/fid.json"
done
for name in vae repa-e; do
    [ -f "$OUT/$name/rfid.json" ] || repflow eval "$OUT/$name" --reconstruct --num-samples 1000 --ref-count 1000 \
        --json "$OUT/$name/rfid.json"
done
$PY - "$OUT" "$STEPS" <<'PYEOF'
import json, sys
from pathlib import Path
out, steps = Path(sys.argv[1]), int(sys.argv[2])
def metric(run, file, key):
    result = json.load(open(out / run / file))
    return result["metrics"].get(key, result.get(key))  # PSNR sits beside the metrics
with open(out / "repa-e-fashion.csv", "w") as f:
    f.write("run,vae,steps,fid1000,vae_rfid1000,vae_psnr\n")
    for run, vae in (("frozen", "vae"), ("repa-e", "repa-e"), ("frozen-e2e", "repa-e")):
        label = "before (frozen)" if vae == "vae" else "tuned by REPA-E"
        f.write(f"{run},{label},{steps},{metric(run, 'fid.json', 'fid'):.1f},"
                f"{metric(vae, 'rfid.json', 'fid'):.1f},{metric(vae, 'rfid.json', 'psnr'):.2f}\n")
print((out / "repa-e-fashion.csv").read_text())
PYEOF

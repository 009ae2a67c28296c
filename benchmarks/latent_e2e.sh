#!/usr/bin/env bash
# End to end in SD-VAE latent space on a small real set, offline: Fashion-MNIST upscaled to 64 px RGB, encoded by
# a randomly initialised AutoencoderKL of the real SD-VAE architecture (83.7M params, factor 8: 64 px -> 8x8x4),
# cached with mirror images by two processes (torchrun), then a class-conditional SiT trained on the cache and
# sampled. With random VAE weights the samples look like nothing: this proves the path, not the quality.
#   bash benchmarks/latent_e2e.sh [OUT_DIR] [NUM_IMAGES] [STEPS]
set -euo pipefail
OUT=${1:-/tmp/repflow-latent-e2e}
NUM=${2:-1024}
STEPS=${3:-400}
PY=${PY:-python}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
mkdir -p "$OUT"
VAE="$OUT/sd-vae-random"
[ -f "$VAE/config.json" ] || $PY - "$VAE" <<'PYEOF'
import sys, torch
from repflow._compat import require
AutoencoderKL = require("diffusers").AutoencoderKL
torch.manual_seed(0)  # the architecture of stabilityai/sd-vae-ft-ema (its config.json), random weights
AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
              norm_num_groups=32, sample_size=256).save_pretrained(sys.argv[1])
PYEOF
DATA=(data.dataset=fashion_mnist data.resolution=64 data.channels=3 "data.subset=$NUM" data.hflip=true
      codec.kind=sd_vae "codec.path=$VAE")
MODEL=(model.arch=SiT-T/1 model.depth=6 model.hidden_size=192 model.num_heads=3 "train.steps=$STEPS"
       train.batch_size=64 train.log_every=50 train.ckpt_every=200 train.sample_num=20 sample.batch_size=20)
time $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m repflow.cli \
    cache latents demo-fashion "${DATA[@]}" --out "$OUT/cache" --batch-size 32
time $PY -m repflow.cli train demo-fashion "${DATA[@]}" "codec.cache=$OUT/cache" "${MODEL[@]}" --out "$OUT/run"
time $PY -m repflow.cli sample "$OUT/run" --num 40 --sampler sde --steps 50 --out "$OUT/samples"

# Sourced by the Fashion-MNIST benchmark scripts: their arguments (OUT_DIR, STEPS), offline hub, the CLI through
# $PY, and "is this run trained to this step" (finished runs are kept, so a script reruns after an interruption).
set -euo pipefail
OUT=${1:-$DEFAULT_OUT}
STEPS=${2:-1000}
PY=${PY:-python}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
repflow() { $PY -m repflow.cli "$@"; }
trained() { [ -d "$1/checkpoints/ckpt-$(printf %08d "$2")" ]; }

"""Run by tests under torchrun: train a tiny config into a run directory (rank-aware)."""

import sys

import torch

from repflow.eval.online import training_hooks
from repflow.train.loop import train
from tests.conftest import tiny_config

if __name__ == "__main__":
    torch.set_num_threads(1)
    run, stop = sys.argv[1], int(sys.argv[2])
    cfg = tiny_config(*sys.argv[3:])
    train(cfg, run, stop_at=stop, hooks=training_hooks(cfg))

"""``train.init_from`` (``repflow train ... --init-from RUN``): start a new run from another run's weights.

Every network of the new method takes, from the source's newest checkpoint (or the checkpoint given), the
tensors with the same name and shape: the EMA copy of the source's first decay where it kept one (the weights
it samples with), else its raw weights. Whatever is left keeps its fresh initialisation and is listed in one
line (a flow run fine-tuned as MeanFlow: the interval embedder ``t_embedder.interval``). A resumed run ignores
the setting: its own checkpoint wins.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..runtime.checkpoint import select_weights
from ..runtime.lookup import load_checkpoint


def init_from(networks: dict[str, nn.Module], source: str) -> str:
    """Load the matching weights of ``source`` into ``networks``; returns the start-up line saying what happened."""
    ckpt = load_checkpoint(source)
    available = ckpt.weight_names()
    decays = list(ckpt.config.train.ema_decays)
    loaded, new, used = 0, [], set()
    for name, net in networks.items():
        own = net.state_dict()
        if name in available:
            file, _ = select_weights(decays, name, -1.0, available, required=False)
            used.add(file)
            theirs = ckpt.weights(file)
            take = {k: v for k, v in theirs.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
            with torch.no_grad():
                for k, v in take.items():
                    own[k].copy_(v.to(own[k].dtype))
            loaded += len(take)
            new += [f"{name}.{k}" for k in own if k not in take]
        else:
            new += [f"{name}.{k}" for k in own]
    if not loaded:  # training from scratch under an "initialised from" line is what the user did not ask for
        raise ConfigError(f"train.init_from: {ckpt.path} shares no weights with this model (no tensor of the same "
                          "name and shape); start without it or choose a run of the same family")  # fmt: skip
    files = ", ".join(sorted(used))
    return f"initialised from {ckpt.path} ({files}): {loaded} tensors; new: {', '.join(new) if new else 'none'}"


__all__ = ["init_from"]

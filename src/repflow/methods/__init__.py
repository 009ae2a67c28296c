"""Methods the training loop trains, each a file plus its registration here.

- ``flow``: SiT (flow matching of a DiT) with composable terms: ``repa``, ``reg``, ``dispersive``;
- ``simclr``: the tiny offline encoder's self-supervised training;
- ``manifold``: JiT's toy (a 2-D spiral in D dimensions), for ``repflow bench manifold``;
- ``rae_decoder``: RAE's pixel decoder (two phases: decoder, discriminator);
- ``dsd``: Diffusion as Self-Distillation (one ViT encodes, decodes and denoises; an EMA target network);
- ``meanflow``: MeanFlow (the flow method's network with a second time input, trained on average velocities);
- ``repa_e``: REPA-E (a diffusers VAE tuned end to end with the SiT by the REPA loss; three phases).

See README, "Adding a method".
"""

from . import (  # noqa: F401
    dispersive,
    dsd,
    flow,
    manifold,
    meanflow,
    rae_decoder,
    reg,
    repa,
    repa_e,
    simclr,
    velocity_cosine,  # noqa: F401
)
from .base import Draw, Method, MethodEnv, Phase, TrainBatch
from .flow import FlowMethod, Term

__all__ = ["Draw", "FlowMethod", "Method", "MethodEnv", "Phase", "Term", "TrainBatch"]

"""FDr^k (FD-loss, Yang et al. 2026; RAEv2 reports FDr6): in each of k representation spaces, the Fréchet distance
of the samples divided by that space's *valFD*, the FD of held-out real images against the same reference (so a
real held-out set scores 1 in every space), then the arithmetic mean over the spaces.

RAEv2's FDr6 (their ``fd_evaluator`` catalogue, taken from FD-loss's ``eval_all_fds.py``): six spaces, at the input
sizes they use, and their valFD constants on ImageNet 256 (the 50K validation images against the training-set
reference of each space; the Inception one is FID against ADM's reference batch). Those constants only mean
something for ImageNet at 256 px against those references: on other data give a held-out real set
(``--fdr-norm``), whose FD in each space becomes the normaliser.
"""

from __future__ import annotations

import numpy as np

# space -> valFD on ImageNet 256 (FD-loss / RAEv2): inception = FID(ADM), convnext, dinov2_cls, mae_cls,
# siglip_cls, clip_cls
FDR6 = {
    "inception": 1.68,
    "convnextv2-base@224": 56.87,
    "dinov2-vitl14@256": 14.19,
    "mae-vitl16@224": 0.04,
    "siglip2-so400m16@224": 0.60,
    "clip-vitl14@256": 5.60,
}
FDR6_SOURCE = "RAEv2 / FD-loss valFD constants, ImageNet 256 (val 50K vs train reference)"


def fdr(fds: dict[str, float], norms: dict[str, float]) -> tuple[float, dict[str, float]]:
    """(FDr^k, FDr per space) of the FDs in ``fds`` (space -> FD), each divided by its valFD in ``norms``."""
    missing = [s for s in fds if s not in norms]
    if missing:
        raise ValueError(f"no FDr normaliser for {', '.join(missing)}: pass --fdr-norm (a held-out real set)")
    bad = {s: norms[s] for s in fds if not norms[s] > 0}
    if bad:
        raise ValueError(f"FDr normalisers must be positive (a held-out set equal to the reference has FD 0): {bad}")
    parts = {s: fds[s] / norms[s] for s in fds}
    return float(np.mean(list(parts.values()))), parts

"""REPA-E's batch normalisation of latents between a trainable VAE and the diffusion transformer.

The official SiT (``models/sit.py``) normalises its input with ``BatchNorm2d(C, eps=1e-4, momentum=0.1,
affine=False)``: in the diffusion step (train mode) by the batch's statistics, which also move the running
ones; in the VAE's REPA step (eval mode) by the running statistics, through which the gradient reaches the
VAE. The running statistics are the latent statistics of the tuned VAE (``save_vae_weights.py`` exports the
EMA model's). Under several processes the official code converts it to ``SyncBatchNorm``.

Here the running statistics are parameters that never require gradients, so the run's EMA (``ema_networks``)
averages them as the official ``update_ema`` averages the BN buffers, and checkpoints and the EMA files hold
them. Batch statistics are taken without gradients: the diffusion step's input is already detached
(REPA-E's stop-gradient), so nothing trainable lies behind them. Under torch.distributed they are reduced over
all processes (SyncBatchNorm's statistics).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class LatentBatchNorm(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-4, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.running_mean = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.running_var = nn.Parameter(torch.ones(channels), requires_grad=False)

    @torch.no_grad()
    def set_statistics(self, mean: Tensor | float, var: Tensor | float) -> None:
        """Start from known latent statistics (the official ``init_bn`` from a VAE's latent-stats file)."""
        self.running_mean.copy_(torch.as_tensor(mean, dtype=torch.float64).reshape(-1).expand_as(self.running_mean))
        self.running_var.copy_(torch.as_tensor(var, dtype=torch.float64).reshape(-1).expand_as(self.running_var))

    def mean_std(self) -> tuple[Tensor, Tensor]:
        """Per-channel shift and std the normalisation uses with running statistics: ``(z - mean) / std``."""
        return self.running_mean.detach().double(), (self.running_var.detach().double() + self.eps).sqrt()

    def forward(self, z: Tensor, batch_statistics: bool = False) -> Tensor:  # (B, C, H, W)
        """``batch_statistics``: normalise by this (global) batch's statistics and move the running ones
        (BatchNorm2d's train mode, without gradients); else by the running ones, differentiable in ``z``."""
        if not batch_statistics:
            mean, var = self.running_mean, self.running_var
        else:
            with torch.no_grad():
                mean, var = self.update(z.detach())
        view = lambda v: v.to(z.dtype).view(1, -1, 1, 1)  # noqa: E731
        return (z - view(mean)) / (view(var) + self.eps).sqrt()

    @torch.no_grad()
    def update(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """This batch's mean and biased variance per channel; the running variance gets the unbiased one."""
        zf = z.double()
        sums = torch.stack([zf.sum(dim=(0, 2, 3)), zf.pow(2).sum(dim=(0, 2, 3))])  # (2, C)
        count = torch.tensor(float(z.numel() // z.shape[1]), dtype=torch.float64, device=z.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
            dist.all_reduce(count)
        mean = sums[0] / count
        var = (sums[1] / count - mean.pow(2)).clamp_min(0)
        unbiased = var * count / (count - 1).clamp_min(1)
        m = self.momentum
        self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        return mean, var


__all__ = ["LatentBatchNorm"]

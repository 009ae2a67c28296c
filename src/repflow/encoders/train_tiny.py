"""``repflow encoder train``: self-supervised training of the tiny ViT (SimCLR) and its linear probe.

SimCLR (Chen et al. 2020): two random views of each image (crop-and-zoom, flip, contrast/brightness jitter,
pixel noise); the projected class tokens of the two views are pulled together and pushed away from every
other image in the batch by the NT-Xent loss. Small, fast on a CPU, and it gives the class token the global
semantics REG needs and the patch tokens the layout REPA aligns.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..config import DataConfig
from ..data import build_dataset
from ..data.transforms import uint8_to_model
from .tiny import TinyViT, TinyViTConfig, save_tiny


def augment(x: Tensor, g: torch.Generator) -> Tensor:
    """A random view of a batch of [-1, 1] images."""
    b = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=g)  # noqa: E731
    zoom = u(0.6, 1.0)  # fraction of the side kept
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    tx, ty = (1 - zoom) * u(-1, 1), (1 - zoom) * u(-1, 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = zoom * flip, tx, zoom, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast, brightness = u(0.6, 1.4).view(b, 1, 1, 1), u(-0.2, 0.2).view(b, 1, 1, 1)
    out = out * contrast + brightness + 0.05 * torch.randn(out.shape, generator=g)
    return out.clamp(-1, 1)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """SimCLR's loss: each view must pick out its partner among the other 2B - 1 views."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2B, d)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    b = z1.shape[0]
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(logits, targets)


@torch.no_grad()
def embed(model: TinyViT, images_uint8: Tensor, batch: int = 512) -> Tensor:
    """Class-token features of uint8 images, as the frozen encoder would compute them."""
    model.eval()
    out = []
    for chunk in images_uint8.split(batch):
        x = uint8_to_model(chunk)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        out.append(model.forward_features(x)[:, 0].float())
    return torch.cat(out)


def ridge_probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, l2: float = 1e-2) -> float:
    """Linear probe in closed form: ridge regression onto one-hot labels of standardised features."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = torch.cat([(train_x - mu) / sd, torch.ones(len(train_x), 1)], 1).double()
    b = torch.cat([(test_x - mu) / sd, torch.ones(len(test_x), 1)], 1).double()
    onehot = F.one_hot(train_y, int(train_y.max()) + 1).double()
    w = torch.linalg.solve(a.T @ a + l2 * len(a) * torch.eye(a.shape[1], dtype=a.dtype), a.T @ onehot)
    return float(((b @ w).argmax(1) == test_y).float().mean())


def train_tiny_encoder(
    out: Path,
    dataset: str = "fashion_mnist",
    resolution: int = 32,
    steps: int = 600,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    probe_size: int = 10000,
) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = build_dataset(DataConfig(dataset=dataset, resolution=resolution, channels=3))
    test = build_dataset(DataConfig(dataset=dataset, split="test", resolution=resolution, channels=3))
    model = TinyViT(TinyViTConfig(image_size=resolution))
    head = nn.Sequential(nn.Linear(model.cfg.dim, 512), nn.GELU(), nn.Linear(512, 128))
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    )
    images = data.images  # (N, 3, R, R) uint8, in memory
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="SimCLR", unit="step")
    model.train()
    for _ in bar:
        idx = torch.randint(len(images), (batch_size,), generator=g)
        x = uint8_to_model(images[idx])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z1 = head(model.forward_features(augment(x, g))[:, 0])
            z2 = head(model.forward_features(augment(x, g))[:, 0])
        loss = nt_xent(z1.float(), z2.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    minutes = (time.perf_counter() - t0) / 60
    n = min(probe_size, len(images))
    accuracy = ridge_probe_accuracy(embed(model, images[:n]), data.labels[:n], embed(model, test.images), test.labels)
    meta = {
        "recipe": "SimCLR (NT-Xent, temperature 0.2) on the class token; crop-zoom 0.6-1, flip, contrast, noise",
        "dataset": dataset, "resolution": resolution, "steps": steps, "batch_size": batch_size, "lr": lr,
        "seed": seed, "final_loss": round(loss.item(), 4), "train_minutes": round(minutes, 2),
        "linear_probe_top1": round(accuracy, 4), "probe": f"ridge on class token, {n} train / {len(test)} test",
        "config": asdict(model.cfg),
    }  # fmt: skip
    save_tiny(model, out, meta)
    return meta

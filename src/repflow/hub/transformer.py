"""A repflow run's inference networks as a diffusers model (``ModelMixin`` + ``ConfigMixin``).

The config holds the run's resolved repflow config, so ``from_pretrained`` rebuilds the very networks repflow
trains and samples (``Method.inference_networks``); the weights are one safetensors file, each network's
tensors under ``networks.<name>.``. Nothing is reimplemented: the forward pass is repflow's.
"""

from __future__ import annotations

import json

from torch import nn

from .._compat import require

require("diffusers")  # after the torchvision guard

# diffusers resolves a component's base classes as attributes of the module named in model_index.json
from diffusers import ConfigMixin, ModelMixin  # noqa: E402
from diffusers.configuration_utils import register_to_config  # noqa: E402


class RepflowTransformer(ModelMixin, ConfigMixin):
    """The networks a repflow method samples with (``networks["model"]``: the denoising transformer)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, repflow_config: dict, network_names: list[str], ema: float | str = "raw",
                 class_names: list[str] | None = None, images_seen: int = 0, train_step: int = 0):  # fmt: skip
        super().__init__()
        self.networks = nn.ModuleDict(build_networks(repflow_config))
        if sorted(self.networks) != sorted(network_names):
            raise ValueError(f"the config's method builds networks {sorted(self.networks)}, not {network_names}")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # built on the meta device (diffusers' default), the networks' computed buffers would stay empty
        kwargs["low_cpu_mem_usage"] = False
        return super().from_pretrained(*args, **kwargs)

    def repflow_config(self):
        """The run's :class:`~repflow.config.Config` (as stored; the codec's files are not rewritten)."""
        from ..config import from_yaml

        return from_yaml(json.dumps(self.config.repflow_config))

    def forward(self, *args, **kwargs):
        """The sampled network's forward (``networks["model"]``); sampling goes through the pipeline."""
        return self.networks["model"](*args, **kwargs)


def build_networks(repflow_config: dict) -> dict[str, nn.Module]:
    from ..build import method_class
    from ..config import from_yaml

    cfg = from_yaml(json.dumps(repflow_config))
    return method_class(cfg).inference_networks(cfg)

"""The configuration schema (frozen dataclasses), YAML presets and strict dotted overrides.

A run is described by one :class:`Config`. Three of its sections are *tagged*: their class is chosen by a
tag field and registered by the code that implements it (``codec.kind`` by ``repflow.codecs``,
``model.family`` by ``repflow.models``, ``method.kind`` by ``repflow.methods``), so an SD-VAE codec has a
``scale`` and a pixel codec has none. The flow method's terms (``repa``, ``reg``, ...) register top-level
sections the same way. Values are checked once, here: types when a dict is read, ranges whenever a section
is built (also by :func:`replace`), each failure a :class:`ConfigError` of one line naming the key.

Presets are YAML files shipped in ``repflow/presets``; a preset may ``inherit:`` another. Overrides are
``key.sub=value`` with the value parsed as YAML. The resolved config (every derived field filled in) is
stored with the run and in every checkpoint, so sampling and evaluation rebuild the model from it alone.

``fields``: range checks and the section base classes; ``schema``: the sections and :class:`Config`;
``parse``: dictionaries, YAML, presets and overrides.
"""

from ..errors import ConfigError
from .fields import (
    Section,
    Tagged,
    at_least,
    checked,
    default_variant,
    each,
    nonnegative,
    positive,
    probability,
    replace,
    unit,
)
from .parse import (
    PRESET_DIR,
    from_dict,
    from_yaml,
    list_presets,
    load_config,
    load_dict,
    parse_overrides,
    setting_changes,
    to_dict,
    to_yaml,
)
from .schema import (
    CFG_RULES,
    CORE,
    SAMPLERS,
    CodecConfig,
    Config,
    DataConfig,
    EncoderConfig,
    FlowConfig,
    MethodConfig,
    ModelConfig,
    SampleConfig,
    TimeConfig,
    TrainConfig,
)

__all__ = [
    "CFG_RULES", "CORE", "PRESET_DIR", "SAMPLERS", "CodecConfig", "Config", "ConfigError", "DataConfig",
    "EncoderConfig", "FlowConfig", "MethodConfig", "ModelConfig", "SampleConfig", "Section", "Tagged", "TimeConfig",
    "TrainConfig", "at_least", "checked", "default_variant", "each", "from_dict", "from_yaml", "list_presets",
    "load_config", "load_dict", "nonnegative", "parse_overrides",
    "setting_changes", "positive", "probability", "replace", "to_dict",
    "to_yaml", "unit",
]  # fmt: skip

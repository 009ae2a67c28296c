"""Configs from dictionaries, YAML, presets and dotted overrides (and back), with one-line errors."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError
from ..registry import TERMS
from .fields import Tagged, _unknown_key_message
from .schema import CORE, Config, _top_level_keys

PRESET_DIR = Path(__file__).parent.parent / "presets"

# ----------------------------------------------------------------------------------------------------------
# Building configs from dictionaries, with one-line errors.


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (allowing int -> float and list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config key '{key}' must be one of {_type_name(tp)}, got {value!r}{hint}")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, dict) and dataclasses.is_dataclass(args[0]):
            first = next(iter(value), "name")
            raise ConfigError(f"config key '{key}' is a list of entries: give a list, or address one entry by "
                              f"its index ({key}.0.{first}=...)")  # fmt: skip
        if not isinstance(value, list | tuple):
            value = [value] if args[-1] is Ellipsis else value
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' expects a list of {len(args)} values, got {value!r}")
        if args[-1] is Ellipsis:
            if dataclasses.is_dataclass(args[0]):
                return tuple(from_dict(args[0], v, prefix=f"{key}[{i}].") for i, v in enumerate(value))
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}' expects {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        kinds = " or ".join(_type_name(a) for a in typing.get_args(tp))
        raise ConfigError(f"config key '{key}' expects {kinds}, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads "1e-4" as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"config key '{key}' expects {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _tagged(base: type[Tagged], data: Any, prefix: str) -> Tagged:
    """Pick the registered variant named by the tag (a bare string is the tag alone: ``method: dsd``)."""
    if isinstance(data, str):
        data = {base.TAG: data}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {data!r}")
    tag = data.get(base.TAG) or base.infer_tag(data)
    entry = base.REGISTRY.get(tag)
    return from_dict(entry.config, entry.config.upgrade({**data, base.TAG: tag}), prefix)


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "terms"]
    kwargs: dict[str, Any] = {}
    terms: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if cls is Config and key not in names and key in TERMS:
            terms[key] = from_dict(TERMS.get(key).config, value, prefix=f"{full}.")
            continue
        if key not in names:
            valid = _top_level_keys() if cls is Config else [f"{prefix}{n}" for n in names]
            raise ConfigError(_unknown_key_message(full, valid))
        tp = hints[key]
        if isinstance(tp, type) and issubclass(tp, Tagged):
            kwargs[key] = _tagged(tp, value, prefix=f"{full}.")
        elif dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, prefix=f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    if cls is Config:
        kwargs["terms"] = terms
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists, term sections at the top level) suitable for YAML/JSON."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return to_dict(v)
        if isinstance(v, tuple | list):
            return [convert(x) for x in v]
        if isinstance(v, Mapping):
            return {k: convert(x) for k, x in v.items()}
        return v

    out = {f.name: convert(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name != "terms"}
    if isinstance(cfg, Config):  # terms after the flow section, where a reader looks for the objective
        order = [*CORE[: CORE.index("flow") + 1], *cfg.terms, *CORE[CORE.index("flow") + 1 :]]
        out = {k: out[k] if k in out else convert(cfg.terms[k]) for k in order}
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def setting_changes(old: Config, new: Config) -> list[str]:
    """Every setting that differs between two configs, as ``key: old -> new`` lines (a resumed run says which
    of its checkpoint's settings it changes; those the weights depend on were refused before)."""
    a, b = _flat(to_dict(old)), _flat(to_dict(new))
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_yaml(text: str) -> Config:
    """A config from YAML text; invalid YAML, tags (``!!python/object``) and non-mappings are ConfigErrors."""
    try:
        data = _safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"not valid YAML ({first})") from err
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(data).__name__}")
    return from_dict(Config, data or {})


# ----------------------------------------------------------------------------------------------------------
# Presets and overrides.


class _StrictLoader(yaml.SafeLoader):
    """YAML without duplicate keys: a repeated key is a mistake, not "the last one wins"."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"duplicate key {key!r} on line {line}: each key may appear once in a mapping")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = _safe_load(path.read_text())
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if data is None:  # not the defaults, silently: an empty file is a mistake (a wrong path, a failed write)
        raise ConfigError(f"{path} is empty: a config file holds settings (or `inherit: PRESET`)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    return data


def _merge(base: dict, over: dict, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{prefix}{key}.")
        elif isinstance(value, dict) and value and all(_is_index(k) for k in value):
            out[key] = _merge_indexed(out[key] if out.get(key) is not None else [], value, f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(out.get(key), list):
            raise ConfigError(
                f"config key '{prefix}{key}' is a list: address one entry by its index, e.g. "
                f"{prefix}{key}.0.{next(iter(value))}=... (or {prefix}{key}[0].{next(iter(value))}=...)"
            )
        else:
            out[key] = value
    return out


def _is_index(key: Any) -> bool:
    return isinstance(key, int) or (isinstance(key, str) and key.isdigit())


def _merge_indexed(items: Any, over: dict, key: str) -> list:
    """``encoders.0.cache=DIR`` changes entry 0; the next free index adds an entry."""
    if not isinstance(items, list):
        raise ConfigError(f"config key '{key}' holds {items!r}, not a list: '{key}[{next(iter(over))}]' indexes "
                          f"nothing; set it whole, e.g. {key}=...")  # fmt: skip
    items = list(items)
    for index in sorted(over, key=int):
        i, value = int(index), over[index]
        if i > len(items):
            n = len(items)
            hint = "it is empty: index 0 adds one" if n == 0 else f"give an index below {n}, or {n} to add one"
            raise ConfigError(f"config key '{key}.{i}': the list has {n} entries ({hint})")
        if i == len(items):
            items.append(value)
        elif isinstance(value, dict) and isinstance(items[i], dict):
            items[i] = _merge(items[i], value, f"{key}.{i}.")
        else:
            items[i] = value
    return items


def _resolve_source(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    close = difflib.get_close_matches(name_or_path, list_presets(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `repflow presets` lists them"
    raise ConfigError(f"no preset or YAML file named '{name_or_path}'{hint}")


def load_dict(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict:
    """Read a preset or YAML file into a dict, following ``inherit:`` chains."""
    path = _resolve_source(name_or_path)
    if str(path) in _seen:
        raise ConfigError(f"config inheritance loops through '{path}'")
    data = _read_yaml(path)
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'inherit' must name one preset or file")
    if parent.endswith((".yaml", ".yml")) and (path.parent / parent).is_file():
        parent = str(path.parent / parent)  # relative to the inheriting file
    return _merge(load_dict(parent, _seen + (str(path),)), data)


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=3e-4", "model.qk_norm=true"]`` -> nested dict, values parsed as YAML."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = re.sub(r"\[(\d+)\]", r".\1", key.strip())  # encoders[0].path -> encoders.0.path
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = _safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ConfigError):
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return out


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Preset or YAML file (or the defaults), then dotted overrides; strictly validated."""
    data = load_dict(name_or_path) if name_or_path else {}
    data = _merge(data, parse_overrides(overrides or []))
    return from_dict(Config, data)

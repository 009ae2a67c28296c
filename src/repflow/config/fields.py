"""Range checks attached to config fields, and the section base classes that run them."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any, ClassVar

from ..errors import ConfigError
from ..registry import Registry

# ----------------------------------------------------------------------------------------------------------
# Range checks: attached to fields as metadata, run whenever a section is constructed.

Check = Callable[[Any], "str | None"]


def checked(default: Any = dataclasses.MISSING, check: Check | None = None, **kw: Any) -> Any:
    """A dataclass field whose value must pass ``check`` (which returns an error text, or None)."""
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return field(metadata={"check": check}, **kw)


def positive(v) -> str | None:
    return None if v > 0 else "must be positive"


def nonnegative(v) -> str | None:
    return None if v >= 0 else "must be >= 0"


def probability(v) -> str | None:
    return None if 0 <= v < 1 else "must lie in [0, 1)"


def unit(v) -> str | None:
    return None if 0 <= v <= 1 else "must lie in [0, 1]"


def at_least(lo: float) -> Check:
    return lambda v: None if v >= lo else f"must be >= {lo:g}"


def each(check: Check) -> Check:
    return lambda vs: next((f"has a value that {m}" for v in vs if (m := check(v))), None)


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, tuple) and any(_non_finite(v) for v in value)


class Section:
    """Base of every config section: checks field ranges (and that floats are finite) on construction."""

    PREFIX: ClassVar[str] = ""  # the section's key, for messages ("train.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _non_finite(value):
                raise ConfigError(f"config key '{self.PREFIX}{f.name}' must be a finite number, got {value!r}")
            check = f.metadata.get("check")
            problem = check(value) if check and isinstance(value, int | float | tuple) else None
            if problem:
                raise ConfigError(f"config key '{self.PREFIX}{f.name}' {problem}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields (override; raise ConfigError)."""


class Tagged(Section):
    """A section whose class is chosen by a tag field; variants are registered in ``REGISTRY``."""

    REGISTRY: ClassVar[Registry]
    TAG: ClassVar[str] = "kind"
    DEFAULT: ClassVar[str]

    @classmethod
    def infer_tag(cls, data: Mapping) -> str:
        """The tag when the mapping does not name one."""
        return cls.DEFAULT

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """Accept keys an older repflow wrote into stored configs (override in variants)."""
        return data


def default_variant(base: type[Tagged]) -> Any:
    return base.REGISTRY.get(base.DEFAULT).config()


def _unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:  # compare the last component too (train.lrr -> train.lr)
        leaf = key.rsplit(".", 1)[-1]
        close = [
            v
            for v in valid
            if v.rsplit(".", 1)[-1]
            in difflib.get_close_matches(leaf, [x.rsplit(".", 1)[-1] for x in valid], n=3, cutoff=0.5)
        ]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown config key '{key}'{hint}"


def replace(cfg: Any, /, **changes: Any) -> Any:
    """``dataclasses.replace`` that accepts dotted keys and term sections, re-checking every range:
    ``replace(cfg, **{"train.lr": 1e-3})``."""
    nested: dict[str, dict] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    whole = any(f.name == "terms" for f in dataclasses.fields(cfg))  # the Config, whose term sections are a dict
    terms = dict(cfg.terms) if whole else {}
    for head, sub in nested.items():
        flat[head] = replace(terms[head] if head in terms else getattr(cfg, head), **sub)
    if whole:
        for name in [k for k in flat if k in terms]:
            terms[name] = flat.pop(name)
        flat["terms"] = terms
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(flat) - names
    if unknown:
        raise ConfigError(_unknown_key_message(f"{getattr(cfg, 'PREFIX', '')}{sorted(unknown)[0]}", sorted(names)))
    return dataclasses.replace(cfg, **flat)

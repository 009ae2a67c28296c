"""The sampling setting ``repflow sweep --write`` chose for a run, stored as ``<run>/sampling.json``.

It sits next to ``checkpoints/``, outside every checkpoint and every ``config.yaml`` (a checkpoint stays what
training wrote, and the check that a config still describes its weights is not involved), and applies to every
checkpoint of the run: ``repflow sample``, ``repflow eval`` and ``repflow.load(...)`` take its sampler, steps,
guidance scale, interval and EMA as their defaults, under any option given explicitly, and say so on stdout.
Training (previews, evaluation during training) and sweeps keep their own settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, SampleConfig, from_dict, replace, to_dict

FILE = "sampling.json"
FIELDS = ("sampler", "steps", "cfg", "cfg_interval")  # of the `sample` section; the EMA is stored beside them


@dataclass
class Swept:
    path: Path
    sample: dict  # FIELDS -> values
    ema: float  # 0: the raw weights
    record: dict  # how it was chosen: metric, value, checkpoint, samples, reference, sweep table

    def describe(self) -> str:
        r = self.record
        chosen = (f" ({r['metric']} {r['value']:.4g} on {r.get('checkpoint', '?')})"
                  if "metric" in r and "value" in r else "")  # fmt: skip
        return describe_setting(replace(SampleConfig(), **self.sample), self.ema) + chosen


def checked_setting(base: SampleConfig, changes: dict) -> SampleConfig:
    """``base`` with ``changes``, every value checked by the schema (types and choices too, unlike ``replace``)."""
    return from_dict(SampleConfig, {**to_dict(base), **changes}, prefix="sample.")


def describe_setting(opts: SampleConfig, ema: float) -> str:
    """``heun 50 steps, cfg 1.5 on [0, 0.7], EMA 0.9999``: what a sampling setting is, in a few words."""
    weights = "raw weights" if ema == 0 else f"EMA {ema:g}" if ema > 0 else "the first EMA"
    lo, hi = opts.cfg_interval
    return f"{opts.sampler} {opts.steps} steps, cfg {opts.cfg:g} on [{lo:g}, {hi:g}], {weights}"


def run_of(ckpt_path: str | Path) -> Path | None:
    """The run directory holding checkpoint ``ckpt_path`` (``<run>/checkpoints/ckpt-N``), or None."""
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def read_swept(ckpt_path: str | Path) -> Swept | None:
    """The stored setting of the run a checkpoint belongs to, or None; a damaged file is one line."""
    run = run_of(ckpt_path)
    path = run / FILE if run is not None else None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        sample = {k: data["sample"][k] for k in FIELDS if k in data["sample"]}
        if "cfg_interval" in sample:
            sample["cfg_interval"] = tuple(float(v) for v in sample["cfg_interval"])
        ema = float(data["ema"])
        checked_setting(SampleConfig(), sample)
    except (ValueError, KeyError, TypeError, ConfigError) as err:
        raise ValueError(f"{path} is damaged ({' '.join(str(err).split())[:160]}); rerun repflow sweep --write or "
                         "delete it") from err  # fmt: skip
    return Swept(path, sample, ema, data.get("record", {}))


def write_swept(run_dir: str | Path, sample: dict, ema: float, record: dict) -> Path:
    """Store a setting (written atomically: a reader sees the old file or the new one)."""
    path = Path(run_dir) / FILE
    body = {"sample": {k: list(v) if isinstance(v, tuple) else v for k, v in sample.items() if k in FIELDS},
            "ema": ema, "record": {**record, "date": time.strftime("%Y-%m-%d %H:%M:%S")}}  # fmt: skip
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)
    return path


def with_swept(ckpt_path: str | Path, changes: dict, ema: float | None) -> tuple[dict, float, str]:
    """(sampling changes, EMA, a note for stdout): the run's stored setting under the options given
    (``changes``; ``ema`` None when not given). The note is "" when the stored setting changes nothing."""
    swept = read_swept(ckpt_path)
    if swept is None:
        return changes, -1.0 if ema is None else ema, ""
    used = [k for k in FIELDS if k in swept.sample and k not in changes] + (["ema"] if ema is None else [])
    merged = {**swept.sample, **changes}
    if not used:
        return merged, ema, ""
    note = (f"sampling with the setting `repflow sweep --write` stored in {swept.path}: {swept.describe()}; "
            f"used here: {', '.join(used)} (options given explicitly win)")  # fmt: skip
    return merged, swept.ema if ema is None else ema, note

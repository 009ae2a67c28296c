"""The model card (``README.md`` with the Hub's YAML metadata) of an export, written from what repflow knows:
method, architecture, data, training length, the exported weights and sampling setting, every measured metric
of that checkpoint with its protocol (``eval.json`` files of the run), and how to load it."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..config import Config
from ..sample.swept import describe_setting

PIPELINE_TAG = "unconditional-image-generation"  # the Hub's tag for image generators without a text prompt


FAMILIES = {"sit": "SiT", "jit": "JiT", "dit_dh": "DiT^DH", "dsd": "DSD"}


def method_parts(cfg: Config) -> list[str]:
    """``["SiT", "REG", "REPA"]``: the network family, then the method's enabled terms (or its kind)."""
    family = FAMILIES.get(cfg.model.family, cfg.model.family)
    if cfg.method.kind != "flow":
        return [family, cfg.method.kind]
    return [family] + sorted(name.upper() for name, term in cfg.terms.items() if getattr(term, "enabled", False))


def card_metadata(cfg: Config, license: str) -> dict:
    """The YAML header: library, license, tags, pipeline tag (what the Hub indexes)."""
    method = [p.lower().replace("^", "") for p in method_parts(cfg)]
    conditioning = "class-conditional" if cfg.model.num_classes > 0 else "unconditional"
    tags = ["repflow", "image-generation", "flow-matching", *method, f"codec-{cfg.codec.kind}", conditioning]
    return {"library_name": "diffusers", "license": license, "tags": tags, "pipeline_tag": PIPELINE_TAG}


def measured(run_dir: Path, ckpt_path: Path, ema: float | str) -> list[dict]:
    """The ``eval.json`` records of this checkpoint and these weights (samples, eval, sweeps of the run)."""
    found = []
    for f in sorted(run_dir.glob("**/eval.json")):
        try:
            record = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        same_ckpt = Path(str(record.get("checkpoint", ""))).resolve() == ckpt_path.resolve()
        if same_ckpt and record.get("ema") == ema and isinstance(record.get("metrics"), dict):
            found.append(record)
    return found


def _protocol(r: dict) -> str:
    lo, hi = r.get("cfg_interval", [0, 1])
    ref = r.get("reference")
    ref = ref.get("spec", ref.get("path", "")) if isinstance(ref, dict) else ref
    return (f"{r.get('num_samples', '?')} samples, {r.get('sampler', '?')} {r.get('steps', '?')} steps, cfg "
            f"{r.get('cfg', '?')} on [{lo}, {hi}], seed {r.get('seed', '?')}, {r.get('labels', '')}; reference "
            f"{ref}; {r.get('date', '')}")  # fmt: skip


def card_text(cfg: Config, info: dict, records: list[dict], swept: str, license: str, repo: str = "DIR") -> str:
    import yaml

    m, d = cfg.model, cfg.data
    ema = info["ema"]
    weights = f"EMA {ema:g}" if isinstance(ema, float) else "raw (no EMA)"
    method = " + ".join(method_parts(cfg))
    setting = describe_setting(cfg.sample, ema if isinstance(ema, float) else 0.0)
    lines = [
        "---", yaml.safe_dump(card_metadata(cfg, license), sort_keys=False).rstrip(), "---", "",
        f"# {cfg.name or method} ({method}, repflow {__version__})", "",
        f"A {method} model trained with [repflow](https://pypi.org/project/repflow/) and exported with "
        "`repflow export --to diffusers`.", "",
        "| | |", "|---|---|",
        f"| method | {method} (repflow method {cfg.method.kind}) |",
        f"| network | {m.arch} (hidden {m.hidden_size}, depth {m.depth}, heads {m.num_heads}, patch {m.patch_size}) |",
        f"| codec | {cfg.codec.kind} |",
        f"| data | {d.dataset}{f' ({d.root})' if d.root else ''}, {d.resolution} px, {max(m.num_classes, 0)} classes |",
        f"| training | {info['train_step']} steps, {info['images_seen']} images seen, batch {cfg.train.batch_size} |",
        f"| weights | {weights} |",
        f"| sampling | {setting}, seed {cfg.sample.seed} |",
        "",
    ]  # fmt: skip
    if swept:
        lines += [f"The sampling setting and the weights are the sweep's best (`repflow sweep --write`): {swept}.", ""]
    lines += ["## Measured", ""]
    if records:
        lines += ["| metrics | protocol |", "|---|---|"]
        for r in records:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in r["metrics"].items() if isinstance(v, int | float))
            lines.append(f"| {shown} | {_protocol(r)} |")
    else:
        lines.append("Nothing was measured on these weights (`repflow eval RUN --num-samples 50000` measures FID).")
    names = info.get("class_names") or []
    example = f'class_labels=["{names[0]}"]' if names else "num_images=4"
    lines += [
        "", "## How to load", "", "```python",
        "from diffusers import DiffusionPipeline  # needs `pip install repflow` (the pipeline's code)", "",
        f'pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)',
        f"images = pipe({example}, seed=0).images", "```", "",
        f'or `repflow.load("{repo}").sample(num=16, seed=0)`, or `repflow sample {repo} --num-samples 64`.',
        "The same seed gives the same images with each of them (noise of sample i: the stream (seed, i)).", "",
        "## Config", "", "<details><summary>the resolved repflow config</summary>", "", "```yaml",
    ]  # fmt: skip
    from ..config import to_yaml

    lines += [to_yaml(cfg).rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines)


def write_card(out: Path, ckpt, cfg: Config, ema: float | str, license: str) -> Path:
    from ..sample.swept import read_swept

    record = json.loads((out / "transformer" / "config.json").read_text())
    records = measured(ckpt.run_dir, ckpt.path, ema)
    swept = read_swept(ckpt.path)
    path = out / "README.md"
    path.write_text(card_text(cfg, record, records, swept.describe() if swept else "", license))
    return path

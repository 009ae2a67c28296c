"""``repflow train``, ``repflow presets``, ``repflow demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import command


def _train(args) -> int:
    from ..api import fit
    from ..config import list_presets, load_config, to_yaml

    overrides = [*args.overrides, *([f"train.init_from={args.init_from}"] if args.init_from else [])]
    cfg = load_config(args.config, overrides)
    if args.config in list_presets():  # a shipped preset on one's own folder: the images decide the shapes
        from ..init_preset import fit_preset_to_folder

        cfg, note = fit_preset_to_folder(cfg, overrides)
        if note:
            print(f"repflow: {note}", flush=True)
    if args.dry_run:
        from ..build import resolve_static

        print(to_yaml(resolve_static(cfg)), end="")
        print("# model.num_classes/input_size/in_channels and reg.dim are filled in from the data and encoder")
        return 0
    out = Path(args.out or f"runs/{cfg.name}")
    if cfg.train.steps == 0:
        raise ValueError("train.steps=0 trains nothing; set train.steps >= 1")
    if args.no_resume:
        from ..runtime.checkpoint import list_checkpoints

        if list_checkpoints(out):  # a fresh run there would overwrite some and sample from the others
            raise ValueError(f"--no-resume: '{out}' already holds a run's checkpoints; a fresh run needs a new or "
                             "empty --out")  # fmt: skip
    result = fit(cfg, out=out, resume=not args.no_resume)  # with the step hooks the config asks for
    print(f"trained {result.steps} steps in {result.seconds:.0f}s; run: {out}; checkpoint: {result.last_checkpoint}")
    hint = _next_steps(cfg, out)
    if hint:
        print(hint)
    return 0


def _next_steps(cfg, out: Path) -> str:
    """What a new user runs after training: look at samples, then measure (README "Train on your own images")."""
    from ..build import method_class

    kind = method_class(cfg)
    if kind.generates():
        return (f"next: repflow sample {out} --num-samples 16   (a grid); "
                f"repflow eval {out} --num-samples 1000   (FID against the training data)")  # fmt: skip
    if kind.reconstructs():
        return f"next: repflow eval {out} --num-samples 1000   (reconstructions: rFID, PSNR)"
    return ""  # an encoder's own training (SimCLR): nothing to sample or measure here


def _presets(args) -> int:
    from ..config import PRESET_DIR, list_presets

    for name in list_presets():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0]
        note = first[1:].strip() if first.startswith("#") else ""
        print(f"{name:28s} {note}")
    return 0


def _demo(args) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), args.overrides)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = command(
        sub,
        "train",
        "train a model from a preset or YAML file",
        "repflow train demo-fashion-reg --out runs/fashion            # rerun the same line to resume",
        "repflow train sit-b2-reg-in256 data.root=/data/imagenet/train --dry-run",
        "repflow train my.yaml train.lr=3e-4 encoders.0.path=/weights/dinov2_vitb14.pth --out runs/mine",
        "repflow train demo-fashion-meanflow --init-from runs/fashion --out runs/fashion-mf  # flow -> MeanFlow",
        "torchrun --nproc_per_node 8 $(which repflow) train sit-xl2-reg-in256 data.root=... --out runs/xl",
    )
    t.add_argument("config", help="preset name (see `repflow presets`) or path to a YAML file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 model.arch=SiT-B/2")
    t.add_argument("--out", help="run directory (default runs/<name>); an existing run is resumed")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--no-resume", action="store_true", help="never resume: refuse an --out holding checkpoints")
    t.add_argument(
        "--init-from",
        metavar="RUN",
        help="start from the matching weights of another run or checkpoint "
        "(its EMA where kept; the rest is new and listed); same as train.init_from=RUN",
    )
    t.set_defaults(func=_train)

    pr = command(sub, "presets", "list the shipped presets", "repflow presets")
    pr.set_defaults(func=_presets)

    d = command(sub, "demo", "train a small class-conditional model on Fashion-MNIST and sample it",
                "repflow demo --out demo_out", "repflow demo train.steps=300")  # fmt: skip
    d.add_argument("--out", default="demo_out")
    d.add_argument("overrides", nargs="*", help="dotted overrides for the demo preset")
    d.set_defaults(func=_demo)

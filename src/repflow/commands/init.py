"""``repflow init FOLDER``: a commented starting config for one's own images."""

from __future__ import annotations

import argparse
import shlex

from .options import examples


def _init(args) -> int:
    from ..init import write_config

    if args.minutes < 0:
        raise ValueError(f"--minutes must be > 0 (0: the default), got {args.minutes:g}")
    command = shlex.join(["repflow", "init", args.folder, "--method", args.method])
    print(f"surveying {args.folder} and timing one training step on this machine ...")
    path, p = write_config(args.folder, args.method, args.out, args.minutes, args.device, command)
    print(f"wrote {path}: {p.method} at {p.resolution} px, patch {p.patch}, batch {p.batch}, {p.steps} steps "
          f"(~{p.steps * p.seconds_per_step / 60:.0f} min at {p.seconds_per_step:.2f} s/step)\n"
          f"next: repflow train {path} --out runs/{path.stem}")  # fmt: skip
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser(
        "init",
        help="write a commented config for your own image folder (sizes, patch, batch and steps for this machine)",
        **examples(
            "repflow init photos/ --out photos.yaml          # photos/<class>/*.jpg, or a flat folder",
            "repflow init shapes/ --method sit --minutes 30",
            "repflow train photos.yaml --out runs/photos",
        ),
    )
    i.add_argument("folder", help="images: one sub-folder per class (ImageNet layout), or a flat folder")
    i.add_argument("--method", default="reg", choices=["reg", "repa", "sit", "jit", "dsd"],
                   help="the recipe (default reg: SiT + REG + REPA with the packaged tiny encoder)")  # fmt: skip
    i.add_argument("--out", default="", help="the YAML to write (default: FOLDER_NAME.yaml here)")
    i.add_argument("--minutes", type=float, default=0.0, help="training time to plan for (default 15 on a CPU, "
                   "60 on a GPU)")  # fmt: skip
    i.add_argument("--device", default="", choices=["", "cpu", "cuda"], help="plan for this device (default: cuda "
                   "when there is one)")  # fmt: skip
    i.set_defaults(func=_init)

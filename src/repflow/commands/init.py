"""``repflow init FOLDER``: a commented starting config for one's own images."""

from __future__ import annotations

import argparse
import shlex

from .options import command, positive_float


def _init(args) -> int:
    from ..init import rae_files, write_config

    command = shlex.join(["repflow", "init", args.folder, "--method", args.method])
    print(f"surveying {args.folder} and timing training steps on this machine (a few seconds) ...")
    path, p = write_config(args.folder, args.method, args.out, args.minutes, args.device, command)
    minutes = lambda steps, seconds: f"~{steps * seconds / 60:.0f} min at {seconds:.2f} s/step"  # noqa: E731
    if p.method == "rae":
        _, decoder_yaml, decoder_run, stats = rae_files(path)
        print(f"wrote {decoder_yaml} (stage 1: a decoder, patch {p.patch}, {p.decoder_steps} steps, "
              f"{minutes(p.decoder_steps, p.decoder_seconds)}) and {path} (stage 2: DiT^DH in the latent, "
              f"{p.steps} steps, {minutes(p.steps, p.seconds_per_step)}), at {p.resolution} px, batch {p.batch}\n"
              f"next: repflow train {decoder_yaml} --out {decoder_run}\n"
              f"      repflow rae stats {path} --out {stats}\n"
              f"      repflow train {path} --out runs/{path.stem}")  # fmt: skip
        return 0
    print(f"wrote {path}: {p.method} at {p.resolution} px, patch {p.patch}, batch {p.batch}, {p.steps} steps "
          f"({minutes(p.steps, p.seconds_per_step)})\n"
          f"next: repflow train {path} --out runs/{path.stem}")  # fmt: skip
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    i = command(
        sub,
        "init",
        "write a commented config for your own image folder (sizes, patch, batch and steps for this machine)",
        "repflow init photos/ --out photos.yaml          # photos/<class>/*.jpg, or a flat folder",
        "repflow init shapes/ --method sit --minutes 30",
        "repflow train photos.yaml --out runs/photos",
    )
    i.add_argument("folder", help="images: one sub-folder per class (ImageNet layout), or a flat folder")
    i.add_argument("--method", default="auto", choices=["auto", "reg", "repa", "sit", "jit", "dsd", "rae"],
                   help="the recipe (auto: jit, pixel-space x-prediction, when planning for a CPU, where it "
                   "shows shapes in 15 minutes; reg, SiT + REG + REPA with the tiny encoder, on a GPU)")  # fmt: skip
    i.add_argument("--out", default="", help="the YAML to write (default: FOLDER_NAME.yaml here)")
    i.add_argument("--minutes", type=positive_float, default=0.0, help="training time to plan for (default 15 on "
                   "a CPU, 60 on a GPU)")  # fmt: skip
    i.add_argument("--device", default="", choices=["", "cpu", "cuda"], help="plan for this device (default: cuda "
                   "when there is one)")  # fmt: skip
    i.set_defaults(func=_init)

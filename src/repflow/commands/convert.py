"""``repflow convert``: official REG / REPA / SiT checkpoints into repflow runs, and back."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import examples

FORMATS = [
    "official-sit",
    "official-repa",
    "official-reg",
    "official-jit",
    "official-rae",
    "official-raev2",
    "official-lightningdit",
    "official-ddt",
    "official-repa-e",
]  # repflow.convert.FORMATS


def _convert(args) -> int:
    from ..convert import FORMATS, export_checkpoint, import_checkpoint

    if args.to:
        if len(args.items) != 1:
            raise ValueError("repflow convert --to FORMAT takes one run or checkpoint: repflow convert --to "
                             "official-reg RUN --out FILE.pt")  # fmt: skip
        if args.out and Path(args.out).exists():  # a file or a run's own weights would be replaced
            raise ValueError(f"--out '{args.out}' exists; choose a new file")
        path = export_checkpoint(args.to, args.items[0], args.out)
        print(f"wrote {path} ({args.to} layout)")
        return 0
    if len(args.items) < 2 or args.items[0] not in FORMATS:
        raise ValueError(f"usage: repflow convert FORMAT CHECKPOINT --out RUN [key=value ...]; FORMAT is one of "
                         f"{', '.join(FORMATS)}")  # fmt: skip
    kind, source, overrides = args.items[0], args.items[1], args.items[2:]
    ckpt = import_checkpoint(kind, source, args.out, overrides)
    print(f"wrote {ckpt} from {source} ({kind}); sample with `repflow sample {args.out}`, fine-tune with "
          f"`repflow train {args.out}/config.yaml data.root=... --out {args.out}`")  # fmt: skip
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    about = "official REG/REPA/SiT/JiT/RAE/RAEv2/LightningDiT/DDT/REPA-E checkpoints into repflow runs, and back"
    c = sub.add_parser("convert", help=about, **examples(
        "repflow convert official-reg REG-SiT-XL-2-4M.pt --out runs/reg-xl2-official",
        "repflow convert official-sit SiT-XL-2-256x256.pt codec.path=/weights/sd-vae-ft-ema --out runs/sit-xl2",
        "repflow convert official-jit JiT-B-16.pth --out runs/jit-b16",
        "repflow convert official-lightningdit lightningdit-b2.pt --out runs/ldit-b2",
        "repflow convert official-ddt DDT-XL-22en6de-R256.ckpt --out runs/ddt-xl2",
        "repflow convert official-rae stage2_model.pt --out runs/rae-xl codec.decoder=/weights/RAE-ViTXL-n08 "
        "codec.stats=/weights/stat.pt",
        "repflow convert official-raev2 checkpoint.pt --out runs/raev2 codec.stats=/weights/stats.pt",
        "repflow convert official-repa-e sit-repae-sdvae/checkpoints/0400000.pt --out runs/repa-e",
        "repflow convert --to official-repa runs/my-repa --out my-repa.pt"))  # fmt: skip
    c.add_argument("items", nargs="+", help="FORMAT CHECKPOINT [key=value ...], or with --to: RUN_OR_CKPT")
    c.add_argument("--to", choices=FORMATS, help="export a run in this format")
    c.add_argument("--out", required=True, help="the run directory to write (import) or the .pt file (export)")
    c.set_defaults(func=_convert)

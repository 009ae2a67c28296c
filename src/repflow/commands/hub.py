"""``repflow export RUN --to diffusers DIR`` and ``repflow push RUN org/name``: share a run as the Hub does."""

from __future__ import annotations

import argparse

from .options import add_run_argument, examples


def _export(args) -> int:
    from ..hub.export import export_diffusers, export_vae

    if args.vae == bool(args.to):
        from ..errors import ConfigError

        raise ConfigError("repflow export: give --to diffusers OUT, or --vae OUT (a repa_e run's tuned VAE)")
    if args.vae:
        path = export_vae(args.run, args.out, ema=args.ema)
        print(f"wrote {path} (a diffusers AutoencoderKL with its latent statistics; train on it frozen: "
              f"codec.kind=vae codec.path={path})")  # fmt: skip
        return 0
    path = export_diffusers(args.run, args.out, ema=args.ema, license=args.license)
    print(f"wrote {path} (diffusers: DiffusionPipeline.from_pretrained('{path}', trust_remote_code=True); "
          f"repflow: repflow.load('{path}'); share: repflow push {path} ORG/NAME)")  # fmt: skip
    return 0


def _push(args) -> int:
    from ..hub.push import push

    url = push(args.run, args.repo, public=args.public, ema=args.ema, license=args.license)
    print(f"pushed to {url}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ema", type=float, default=None,
                   help="weights: the EMA decay (0: raw; default: the sweep's choice, else the first EMA)")  # fmt: skip
    p.add_argument("--license", default="other", help="license id for the model card (default: other)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="a run as a diffusers pipeline folder with a model card", **examples(
        "repflow export runs/reg-xl2 --to diffusers hf/reg-xl2",
        "repflow export runs/jit-b16 --to diffusers hf/jit-b16 --ema 0.9999 --license mit",
        "repflow export runs/repa-e --vae vaes/e2e-vae"))  # fmt: skip
    add_run_argument(e)
    e.add_argument("--to", choices=["diffusers"], help="the format (diffusers)")
    e.add_argument("out", help="the folder to write (new or empty)")
    e.add_argument("--vae", action="store_true",
                   help="write a repa_e run's tuned VAE to OUT as a diffusers AutoencoderKL")  # fmt: skip
    _common(e)
    e.set_defaults(func=_export)
    p = sub.add_parser("push", help="upload a run (exported on the fly) or an export folder to the Hugging Face Hub",
                       **examples("repflow push runs/reg-xl2 my-org/reg-xl2",
                                  "repflow push hf/reg-xl2 my-org/reg-xl2 --public"))  # fmt: skip
    p.add_argument("run", help="a run, checkpoint or `repflow export` folder")
    p.add_argument("repo", help="the Hub repository, org/name (created private unless --public)")
    p.add_argument("--public", action="store_true", help="create the repository public")
    _common(p)
    p.set_defaults(func=_push)

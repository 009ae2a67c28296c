"""The ``repflow`` command line. Thin: parse, call. ``main(argv)`` is callable from tests."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__

USAGE = """\
Train, sample and evaluate diffusion transformers that learn fast from pretrained representations
(SiT, REPA, REG, JiT, RAE, DSD), on one GPU, many, or a CPU.

first steps:
  repflow init photos/ --out photos.yaml         a config for your own images, chosen for this machine
  repflow demo                                   train a small model on Fashion-MNIST and draw samples
  repflow presets                                the shipped configs (ImageNet recipes, demos)
  repflow train demo-fashion-reg train.steps=2000 --out runs/fashion
  repflow sample runs/fashion --num-samples 100 --cfg 1.5
  repflow eval runs/fashion --num-samples 5000   FID of a run against its training data

`repflow COMMAND --help` explains a command, with examples."""


class _Parser(argparse.ArgumentParser):
    """A bad command line (unknown option, missing or malformed value) is one line, not argparse's usage block
    followed by the error; sub-command parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .commands import bench, cache, codec, convert, encoder, eval, hub, init, rae, sample, sweep, train

    p = _Parser(prog="repflow", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"repflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    init.add_commands(sub)
    train.add_commands(sub)
    sample.add_commands(sub)
    eval.add_commands(sub)  # eval, analyze
    sweep.add_commands(sub)
    cache.add_commands(sub)
    encoder.add_commands(sub)
    convert.add_commands(sub)
    codec.add_commands(sub)
    rae.add_commands(sub)
    hub.add_commands(sub)  # export, push
    group = sub.add_parser("bench", help="benchmarks: throughput, sampling speed, convergence (FID vs steps)")
    bench_sub = group.add_subparsers(dest="bench_command", required=True)
    bench.add_commands(bench_sub)
    eval.add_bench_commands(bench_sub)  # bench convergence
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import CheckpointError, ConfigError, NonFiniteLossError

    args = parse_args(build_parser(), argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `repflow train ... --dry-run | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes stdout at exit)
        return 0
    except NonFiniteLossError as err:
        print(f"repflow: {err}", file=sys.stderr)
        return 3
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"repflow: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # permissions, full disks, paths that are files: what and where, in one line
        where = f": {err.filename}" if err.filename else ""
        print(f"repflow: error: {err.strerror or _one_line(err)}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"repflow: interrupted; {_KEPT.get(args.command, 'nothing half-written is kept')}", file=sys.stderr)
        return 130


_KEPT = {  # what an interrupted command leaves behind, said in its Ctrl-C line
    "train": "the newest checkpoint is intact",
    "demo": "the newest checkpoint is intact",
    "sample": "the images already written are kept; the same command continues from them",
    "sweep": "finished cells are kept in the sweep's table; the same command continues from them",
}


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``key=value`` overrides are accepted anywhere on the line, also after ``--out DIR`` (argparse alone
    takes a positional list only in one place); anything else unknown is a usage error."""
    args, extra = parser.parse_known_args(argv)
    dest = next((d for d in ("overrides", "items") if isinstance(getattr(args, d, None), list)), None)
    loose = [e for e in extra if dest is None or e.startswith("-") or "=" not in e]
    if loose:
        parser.error(f"unrecognized arguments: {' '.join(loose)}")
    if extra:
        getattr(args, dest).extend(extra)
    return args


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())

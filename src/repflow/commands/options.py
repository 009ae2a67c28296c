"""Options shared by several commands, defined once: sampling knobs (``sample``, ``eval``, ``bench``)."""

from __future__ import annotations

import argparse
import math

from ..config import CFG_RULES, SAMPLERS


def parse_interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0,0.7), got {text!r}") from err
    return lo, hi


def count(text: str) -> int:
    """A number of things (images, steps, a batch): an integer >= 0; a negative one is a usage error, never
    "all of them"."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    if value > MAX_COUNT:  # past C's index range: an OverflowError deep in numpy otherwise
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT:,}, got {value:,}")
    return value


MAX_COUNT = 10**9


def positive(text: str) -> int:
    """A count that must be at least one (images per batch, repeats, a size)."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (minutes, seconds)."""
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated counts (steps, blocks, dimensions): each >= 0."""
    try:
        return [count(x) for x in text.split(",") if x.strip()]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers >= 0, got {text!r}") from err


def float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def examples(*lines: str) -> dict:
    """Keyword arguments for ``add_parser`` that end a command's help with examples."""
    text = "examples:\n" + "\n".join(f"  {line}" for line in lines)
    return {"epilog": text, "formatter_class": argparse.RawDescriptionHelpFormatter}


def command(sub: argparse._SubParsersAction, name: str, help: str, *example_lines: str,
            **kw) -> argparse.ArgumentParser:  # fmt: skip
    """A command's parser; its ``--help`` ends with the examples (every command has some: a test checks)."""
    return sub.add_parser(name, help=help, **kw, **examples(*example_lines))


def command_group(sub: argparse._SubParsersAction, name: str, help: str, *example_lines: str,
                  dest: str = "") -> argparse._SubParsersAction:  # fmt: skip
    """A command made of sub-commands (``repflow cache latents``): the list its sub-commands are added to, one
    of which must be given."""
    return command(sub, name, help, *example_lines).add_subparsers(dest=dest or f"{name}_command", required=True)


def add_run_argument(p: argparse.ArgumentParser) -> None:
    """The run a command reads: its newest checkpoint, or one checkpoint."""
    p.add_argument("run", help="run directory (newest checkpoint) or checkpoint directory")


# option -> field of the config's `sample` section
_FIELDS = {"sampler": "sampler", "steps": "steps", "cfg": "cfg", "cfg_interval": "cfg_interval",
           "cfg_cls": "cfg_cls", "seed": "seed", "sample_batch_size": "batch_size", "shift": "shift",
           "guide_scale": "guide_scale", "grid": "grid", "internal_guidance": "internal_guidance",
           "internal_interval": "internal_interval", "cfg_rule": "cfg_rule",
           "cfg_channels": "cfg_channels", "encoder_reuse": "encoder_reuse"}  # fmt: skip


def add_sampling_args(
    p: argparse.ArgumentParser,
    steps_flags: tuple[str, ...] = ("--steps", "--sampling-steps"),
    batch_flags: tuple[str, ...] = ("--batch-size", "--sample-batch-size"),
    choose: bool = True,
) -> None:
    """Sampling knobs; the ones left unset keep the run's ``sample`` section. Commands whose own options use
    ``--steps`` or ``--batch-size`` for something else pass the longer names only; ``choose`` adds the options
    that pick what to generate (classes, an AutoGuidance guide run)."""
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument(*steps_flags, dest="steps", type=count, help="solver steps")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--cfg-interval", type=parse_interval, help="LO,HI: guide only for t in [LO, HI] (t=1 is noise)")
    p.add_argument("--cfg-rule", choices=CFG_RULES, help="where the interval is decided: step (SiT/REPA/REG: "
                   "once per solver step, inclusive) or evaluation_strict (JiT: every evaluation, strict)")  # fmt: skip
    p.add_argument("--cfg-channels", type=int, help="guide only the image's first N channels (LightningDiT's "
                   "official rule: 3; 0 = all)")  # fmt: skip
    p.add_argument("--encoder-reuse", type=int, help="DDT: run the condition encoder every N evaluations, reusing "
                   "its output in between (1 = every one)")  # fmt: skip
    p.add_argument("--cfg-cls", type=float, help="REG: guidance scale of the class token (-1: same as --cfg)")
    p.add_argument("--shift", type=float, help="time shift of the sampling grid (-1: the training shift)")
    p.add_argument("--grid", choices=("uniform", "rae"), help="time grid: uniform to t=0, or the official RAE "
                   "grid (STEPS points, 1 - linspace(0, 0.999))")  # fmt: skip
    p.add_argument("--internal-guidance", type=float, help="RAEv2: guide the full output away from the internal "
                   "one by this scale (1 = off)")  # fmt: skip
    p.add_argument("--internal-interval", type=parse_interval, help="LO,HI: internal guidance only for t in [LO, HI]")
    p.add_argument("--seed", type=int, help="sampling seed (sample i uses its own stream of it)")
    p.add_argument(*batch_flags, dest="sample_batch_size", type=positive, help="images generated per batch")
    p.add_argument("--ema", type=float, help="EMA decay to use (-1: first EMA, 0: raw weights; default: the one "
                   "`repflow sweep --write` stored in the run, else the first)")  # fmt: skip
    if choose:
        p.add_argument("--classes", help="labels to generate, e.g. 3,7 or sneaker,bag (default: all, balanced)")
        p.add_argument("--guide", default="", help="AutoGuidance: a (weaker) run or checkpoint guiding this one")
        p.add_argument("--guide-scale", type=float, help="AutoGuidance's scale (-1: --cfg)")


def sampling_changes(args) -> dict:
    """The sampling options given on the command line, as changes to the ``sample`` section."""
    return {field: getattr(args, a) for a, field in _FIELDS.items() if getattr(args, a, None) is not None}

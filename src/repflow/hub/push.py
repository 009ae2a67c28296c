"""``repflow push``: an export folder (made on the fly from a run) uploaded with huggingface_hub. Thin on purpose:
the folder is what is tested; the token comes from where huggingface_hub looks (HF_TOKEN, ``hf auth login``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..runtime.exported import is_exported, split_hub_id

# what an export holds: an export used as a run also collects samples/, eval/, sweep/, never uploaded
UPLOADED = ["model_index.json", "pipeline.py", "README.md", "transformer/*", "vae/*", "codec/*"]


def push(run: str | Path, repo: str, public: bool = False, ema: float | None = None, license: str = "other") -> str:
    repo_id, revision = split_hub_id(repo)
    if revision:
        raise ValueError(f"push to a repository, not a revision: drop '@{revision}' from {repo}")
    from huggingface_hub import HfApi

    if is_exported(run):
        return _upload(HfApi(), Path(run), repo_id, public)
    from .export import export_diffusers

    with tempfile.TemporaryDirectory(prefix="repflow-export-") as tmp:
        folder = export_diffusers(run, Path(tmp) / "export", ema=ema, license=license)
        return _upload(HfApi(), folder, repo_id, public)


def _upload(api, folder: Path, repo_id: str, public: bool) -> str:
    api.create_repo(repo_id, private=not public, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=UPLOADED,
                             commit_message="repflow export")  # fmt: skip
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")

"""Reading torch files without running code: ``torch.load(weights_only=True)`` with one-line refusals."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError


def read_json(path: str | Path) -> Any:
    """A JSON file's value, or None when it cannot be read or parsed: the caller says what it expected there."""
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def refusal(path: str | Path, what: str, err: BaseException, hint: str = "save it as .safetensors") -> CheckpointError:
    """The one line for a file that would need unpickling code (or is damaged), naming the file and, when
    the unpickler said it, the code it would have had to import."""
    text = str(err)
    found = re.search(r"unsupported global:? (?:global )?([\w.]+)|refusing to load ([\w.]+)", text, re.IGNORECASE)
    if isinstance(err, pickle.UnpicklingError) or found:
        name = f" ({found.group(1) or found.group(2)})" if found else ""
        return CheckpointError(f"{what} '{path}' needs code to be unpickled{name} and is refused: repflow loads "
                               f"nothing that could run code ({hint})")  # fmt: skip
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
    return CheckpointError(f"{what} '{path}' cannot be read as a torch file ({first[:150]}): is it damaged?")


def load_plain(path: str | Path, what: str, allowed: tuple[type, ...] = ()) -> Any:
    """The tensors, numbers and containers of a ``torch.save`` file (``allowed``: a few more safe classes)."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, and several types for damaged archives
        raise refusal(path, what, err) from err

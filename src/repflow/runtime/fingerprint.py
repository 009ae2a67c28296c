"""Content hashes of weights: what makes a cache (latents, features) or a reference interchangeable with a model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor


def weights_sha256(state: Mapping[str, Tensor], keep: Callable[[str], bool] = lambda key: True) -> str:
    """16 hex digits of sha256 over the kept tensors (name, then float32 bytes) in sorted name order: the same
    weights give the same hash wherever they were loaded from, in whatever dtype they are stored."""
    h = hashlib.sha256()
    for key in sorted(k for k in state if keep(k)):
        h.update(key.encode())
        h.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def json_sha256(value: Any) -> str:
    """16 hex digits of sha256 over a JSON-able value with sorted keys (a model's config)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

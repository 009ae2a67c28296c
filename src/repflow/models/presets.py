"""The model zoo: depth / width / heads of the reference sizes, by name ("SiT-XL/2")."""

from __future__ import annotations

import difflib
import re

# (depth, hidden, heads) from DiT/SiT (S, B, L, XL); "T" is a tiny size for demos and tests.
SIZES: dict[str, tuple[int, int, int]] = {
    "T": (6, 192, 3),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCHES = (1, 2, 4, 8, 16, 32)
FAMILIES = ("SiT", "DiT")

ARCHS: dict[str, dict[str, int]] = {
    f"{fam}-{size}/{p}": {"depth": d, "hidden_size": h, "num_heads": n, "patch_size": p}
    for fam in FAMILIES
    for size, (d, h, n) in SIZES.items()
    for p in PATCHES
}


def arch_dims(name: str) -> dict[str, int]:
    """Depth, width, heads and patch of a named architecture, e.g. ``SiT-B/2``."""
    if name in ARCHS:
        return dict(ARCHS[name])
    m = re.fullmatch(r"(\w+)-(\w+)/(\d+)", name)
    known = ", ".join(f"SiT-{s}/2" for s in SIZES)
    close = difflib.get_close_matches(name, list(ARCHS), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {known}"
    reason = "unknown size or patch" if m else "expected FAMILY-SIZE/PATCH"
    raise ValueError(f"unknown model arch {name!r} ({reason}); {hint}")

"""What the refinement panel reads from the curator: pixel boxes and points typed as text, and the
samples it works on. Pure functions; a typing mistake is a
:class:`~sam3_ops.curation.proposals.RefineError` naming the box or point and what was read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..curation.proposals import RefineError

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_pixel_boxes(text: str | None) -> np.ndarray:
    """Parses boxes typed in pixel coordinates: ``x1, y1, x2, y2`` per box.

    Boxes are separated by ``;`` or new lines; brackets are optional
    (``"[10, 20, 50, 60]; 5 5 30 30"`` is two boxes).

    Returns:
        ``(N, 4)`` float32 pixel ``xyxy`` boxes (``(0, 4)`` for blank text)

    Raises:
        RefineError: a box without exactly four numbers, saying which one and what it read
    """
    return _parse_groups(text, 4, "box", "'x1, y1, x2, y2' in pixels, boxes separated by ';'")


def parse_pixel_points(text: str | None, what: str = "point") -> np.ndarray:
    """Parses points typed in pixel coordinates: ``x, y`` per point.

    Points are separated by ``;`` or new lines; brackets are optional (``"[10, 20]; 30 40"`` is
    two points).

    Returns:
        ``(N, 2)`` float32 pixel ``xy`` points (``(0, 2)`` for blank text)

    Raises:
        RefineError: a point without exactly two numbers, saying which one (as ``what``) and what it read
    """
    return _parse_groups(text, 2, what, "'x, y' in pixels, points separated by ';'")


def _parse_groups(text: str | None, size: int, what: str, expected: str) -> np.ndarray:
    """Groups of ``size`` numbers separated by ``;``, new lines or ``] [``: ``(N, size)`` float32."""
    if text is None or not str(text).strip():
        return np.zeros((0, size), np.float32)
    groups = []
    chunks = [c for c in re.split(r"[;\n]|\]\s*,?\s*\[", str(text)) if c.strip(" \t[](),")]
    for i, chunk in enumerate(chunks):
        cleaned = chunk.strip().strip("[]() ")
        tokens = [t for t in re.split(r"[,\s]+", cleaned) if t]
        if len(tokens) != size or not all(re.fullmatch(_NUMBER, t) for t in tokens):
            count = {2: "two", 4: "four"}.get(size, str(size))
            raise RefineError(f"Typed {what} {i + 1} ({chunk.strip()!r}) is not {count} numbers: expected {expected}")
        groups.append([float(t) for t in tokens])
    return np.asarray(groups, np.float32).reshape(-1, size)


def target_sample_ids(current_sample: str | None, selected: Sequence[str] | None) -> list[str]:
    """The samples the panel works on: the sample open in the modal, else the grid's selection."""
    if current_sample:
        return [current_sample]
    return list(dict.fromkeys(selected or ()))

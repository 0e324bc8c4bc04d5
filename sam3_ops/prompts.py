"""Prompt types and their validation. Pure: numpy and the standard library only.

An image's prompts arrive as :class:`ImagePrompts` (text prompts, prompt boxes with their labels,
negative boxes; boxes in pixel ``xyxy``). :func:`build_queries` turns them into the queries the
engine runs for a mode:

- ``text``: one query per text prompt (label = the prompt), every negative box attached;
- ``exemplars``: the prompt boxes are visual examples. With text prompts, one query per prompt
  carrying every example; without, one query per distinct label of the examples (text
  ``"visual"``, as transformers' processor does), so "cat" boxes find cats and "dog" boxes dogs;
- ``boxes``: one query per prompt box (SAM1-style, one mask each); negative boxes become negative
  points at their centres, for the prompt boxes they overlap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

MODES = ("text", "boxes", "exemplars")
#: SAM3's text encoder reads at most this many tokens (start and end tokens included)
MAX_TEXT_TOKENS = 32
#: the text transformers' processor uses for a query with boxes and no words
VISUAL_PROMPT = "visual"


def validate_mode(mode: str) -> str:
    """Returns ``mode`` if it is one of :data:`MODES`, else raises a ``ValueError`` listing them."""
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; the valid modes are {', '.join(MODES)}")
    return mode


def validate_prompts(prompts: str | Iterable[str] | None, mode: str) -> tuple[str, ...]:
    """Checks and normalises text prompts for ``mode``.

    A single string is one prompt; surrounding white space is removed and duplicates are dropped
    (first occurrence kept). ``text`` mode needs at least one prompt; ``exemplars`` takes any
    number; ``boxes`` takes none.

    Raises:
        ValueError: naming the problem (empty list, a blank or non-string prompt, prompts in
            ``boxes`` mode)
    """
    validate_mode(mode)
    if prompts is None:
        prompts = ()
    elif isinstance(prompts, str):
        prompts = (prompts,)
    elif not isinstance(prompts, Iterable):
        raise ValueError(f"prompts must be a string or a list of strings, not {type(prompts).__name__}")

    cleaned: list[str] = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {i} is a {type(prompt).__name__} ({prompt!r}); prompts must be strings")
        text = " ".join(prompt.split())
        if not text:
            raise ValueError(f"prompt {i} is blank; every prompt must contain words, e.g. 'cat'")
        if text in cleaned:
            logger.warning("Ignoring duplicate prompt %r", text)
            continue
        cleaned.append(text)

    if mode == "text" and not cleaned:
        raise ValueError("mode='text' needs at least one prompt, e.g. prompts=['cat', 'dog']")
    if mode == "boxes" and cleaned:
        raise ValueError(
            "mode='boxes' takes no text prompts (each box gets its own mask); use mode='exemplars' "
            "to combine boxes with text"
        )
    return tuple(cleaned)


def sanitize_boxes(boxes_xyxy: np.ndarray | Sequence, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the usable boxes of an image, clipped to it.

    Dropped: boxes with NaN or infinite coordinates, inverted or zero-area boxes, and boxes with no
    area inside the image. Boxes partly outside are clipped to ``[0, width] x [0, height]``.

    Args:
        boxes_xyxy: ``(N, 4)`` pixel boxes ``x1, y1, x2, y2``
        width, height: the image size in pixels

    Returns:
        ``(kept_boxes, kept_index)``: the ``(K, 4)`` float32 clipped boxes and the ``(K,)`` indices
        of the input boxes they came from
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    clipped = np.where(finite[:, None], boxes, 0.0)
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    positive = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    keep = np.flatnonzero(finite & positive & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    return clipped[keep].astype(np.float32), keep


@dataclass
class ImagePrompts:
    """The prompts of one image, boxes in pixel ``xyxy``.

    Attributes:
        texts: text prompts (``text``/``exemplars`` modes)
        boxes: ``(N, 4)`` prompt boxes: one mask each (``boxes``) or visual examples (``exemplars``)
        box_labels: a label per prompt box (``None`` where unknown)
        negative_boxes: ``(M, 4)`` boxes of things that are not wanted
    """

    texts: tuple[str, ...] = ()
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_labels: tuple[str | None, ...] = ()
    negative_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def __post_init__(self):
        self.texts = tuple(self.texts)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.negative_boxes = np.asarray(self.negative_boxes, dtype=np.float32).reshape(-1, 4)
        self.box_labels = tuple(self.box_labels) if len(self.box_labels) else (None,) * len(self.boxes)
        if len(self.box_labels) != len(self.boxes):
            raise ValueError(f"{len(self.boxes)} prompt boxes but {len(self.box_labels)} box labels")


@dataclass
class Query:
    """One question to SAM3 about one image.

    Attributes:
        label: what hits are called (the text prompt, the examples' label, or the box's label)
        text: the text prompt, or ``None`` (box query of the tracker head)
        positive_boxes, negative_boxes: ``(n, 4)`` pixel ``xyxy`` boxes
        negative_points: ``(p, 2)`` pixel ``xy`` points (``boxes`` mode only)
        prompt_index: the prompt box this query answers (``boxes`` mode), else ``-1``
    """

    label: str | None
    text: str | None
    positive_boxes: np.ndarray
    negative_boxes: np.ndarray
    negative_points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    prompt_index: int = -1


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


def _centres_inside(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    inside = (points[:, 0] >= box[0]) & (points[:, 0] <= box[2]) & (points[:, 1] >= box[1]) & (points[:, 1] <= box[3])
    return points[inside]


def build_queries(mode: str, prompts: ImagePrompts) -> list[Query]:
    """The queries the engine runs for one image's prompts in ``mode`` (see the module docstring)."""
    validate_mode(mode)
    negatives = prompts.negative_boxes
    if mode == "text":
        return [Query(text, text, _empty_boxes(), negatives) for text in prompts.texts]

    if mode == "exemplars":
        if not len(prompts.boxes):
            return []
        if prompts.texts:
            return [Query(text, text, prompts.boxes, negatives) for text in prompts.texts]
        queries = []
        for label in dict.fromkeys(prompts.box_labels):  # distinct labels, in order of appearance
            chosen = np.array([lab == label for lab in prompts.box_labels])
            queries.append(Query(label, VISUAL_PROMPT, prompts.boxes[chosen], negatives))
        return queries

    centres = np.stack([(negatives[:, 0] + negatives[:, 2]) / 2, (negatives[:, 1] + negatives[:, 3]) / 2], axis=1)
    return [
        Query(label, None, box[None], _empty_boxes(), _centres_inside(centres, box), index)
        for index, (box, label) in enumerate(zip(prompts.boxes, prompts.box_labels))
    ]


def describe_box_problems(n_given: int, n_kept: int, what: str) -> str | None:
    """A one-line warning for dropped boxes, or ``None`` when every box was kept."""
    dropped = n_given - n_kept
    if dropped <= 0:
        return None
    noun = "box" if n_given == 1 else "boxes"
    return (
        f"dropped {dropped} of {n_given} {what} {noun}: degenerate (NaN, inverted, zero area) "
        "or outside the image"
    )


def is_finite_number(value) -> bool:
    """Whether ``value`` is a real, finite number (used to validate thresholds)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

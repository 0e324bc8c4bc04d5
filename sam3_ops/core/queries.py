"""Prompts, and the queries the engine runs for them. Pure: numpy and the standard library.

Text prompts, of images and videos alike, are :class:`TextPrompt`, checked by
:func:`normalize_text_prompts`. An image's prompts arrive as :class:`ImagePrompts` (text prompts,
prompt boxes with their labels, negative boxes; boxes in pixel ``xyxy``). :func:`build_queries`
turns them into the queries the engine runs for a mode:

- ``text``: one query per text prompt (label and threshold = the prompt's), every negative box
  attached;
- ``exemplars``: the prompt boxes are visual examples. With text prompts, one query per prompt
  carrying every example; without, one query per distinct label of the examples (text
  ``"visual"``, as transformers' processor does), so "cat" boxes find cats and "dog" boxes dogs;
- ``boxes``: one query per prompt box (SAM1-style, one mask each); negative boxes become negative
  points at their centres, for the prompt boxes they overlap;
- ``points``: one query per prompt object (:class:`ObjectPrompt`: points labelled positive or
  negative, optionally a box and the key of a previous mask to refine); negative boxes become
  negative points at their centres, for every object;
- ``auto``: no prompts; the engine lays a grid of single-point queries over the image.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

#: the prompt modes: the detector's (``text``, ``exemplars``) and the tracker's (``boxes``,
#: ``points``, and ``auto``: a grid of points over the whole image)
MODES = ("text", "boxes", "exemplars", "points", "auto")
#: the modes that run on the tracker head (one mask per prompt object, no score threshold)
TRACKER_MODES = ("boxes", "points", "auto")
#: the modes whose prompt objects come from a label field (boxes: Detections; points: Keypoints)
FIELD_MODES = ("boxes", "exemplars", "points")
#: ``multimask`` choices for the tracker: one mask per prompt, its most confident of three, or all three
MULTIMASK = (None, "best", "all")
#: SAM3's text encoder reads at most this many tokens (start and end tokens included)
MAX_TEXT_TOKENS = 32
#: the text transformers' processor uses for a query with boxes and no words
VISUAL_PROMPT = "visual"


@dataclass(frozen=True)
class TextPrompt:
    """One text prompt with its own settings.

    Attributes:
        text: what SAM3 reads (``"person wearing a hard hat"``)
        label: what its hits are called; ``None`` for the text itself
        threshold: its own score threshold; ``None`` for the run's
    """

    text: str
    label: str | None = None
    threshold: float | None = None

    @property
    def name(self) -> str:
        """The label its hits get."""
        return self.label if self.label is not None else self.text


def check_probability(name: str, value) -> float:
    """``value`` as a float, if it is a finite number in ``[0, 1]`` (every threshold's rule).

    Raises:
        ValueError: naming ``name`` (booleans, NaN and text are not numbers here)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], not {value!r}")
    return float(value)


def text_prompt(entry, index: int = 1) -> TextPrompt:
    """One text prompt as a :class:`TextPrompt`: white space in its text collapsed, its label
    stripped, its threshold a float.

    Args:
        entry: a string, a ``{"text", "label", "threshold"}`` dict or a :class:`TextPrompt`
        index (1): its place among the prompts, counted from 1 (for the error message)

    Raises:
        ValueError: naming prompt ``index`` and the problem
    """
    if isinstance(entry, TextPrompt):
        entry = dataclasses.asdict(entry)
    elif isinstance(entry, str):
        entry = {"text": entry}
    if not isinstance(entry, Mapping):
        kind = type(entry).__name__
        raise ValueError(f"prompt {index} is a {kind} ({entry!r}); prompts are strings or dicts with a 'text'")
    unknown, text = sorted(set(entry) - {"text", "label", "threshold"}), entry.get("text")
    if unknown or not isinstance(text, str):
        problem = f"unknown keys {unknown}" if unknown else f"no text ({text!r})"
        raise ValueError(f"prompt {index} has {problem}; a prompt dict needs 'text' and may have 'label', 'threshold'")
    text = " ".join(text.split())
    if not text:
        raise ValueError(f"prompt {index} is blank; every prompt must contain words, e.g. 'cat'")
    label, threshold = entry.get("label"), entry.get("threshold")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ValueError(f"prompt {index} ({text!r}) has label {label!r}; a label must be non-blank text")
    if threshold is not None:
        threshold = check_probability(f"the threshold of prompt {index} ({text!r})", threshold)
    return TextPrompt(text, label and label.strip(), threshold)


def normalize_text_prompts(prompts, *, at_least_one: bool = True, drop_duplicates: bool = False) -> list[TextPrompt]:
    """Text prompts as :class:`TextPrompt` (each checked by :func:`text_prompt`), distinct texts.

    Args:
        prompts: a string, a dict or a :class:`TextPrompt`, a list of them, or ``None`` (none)
        at_least_one (True): refuse an empty list
        drop_duplicates (False): drop a repeated text with a warning (its first occurrence kept)
            instead of refusing it (SAM3 would find the same objects twice)

    Raises:
        ValueError: naming the prompt and the problem
    """
    if prompts is None:
        prompts = ()
    elif isinstance(prompts, str | Mapping | TextPrompt):
        prompts = (prompts,)
    elif not isinstance(prompts, Iterable):
        raise ValueError(f"prompts must be a string or a list of strings or dicts, not {type(prompts).__name__}")
    normalized: dict[str, TextPrompt] = {}
    for index, entry in enumerate(prompts, start=1):  # counted as a person counts: "prompt 1" is the first
        prompt = text_prompt(entry, index)
        if prompt.text in normalized and not drop_duplicates:
            raise ValueError(
                f"prompt {index} repeats {prompt.text!r}; text prompts must be distinct (SAM3 would find the same "
                "objects twice)"
            )
        if prompt.text in normalized:
            logger.warning("Ignoring duplicate prompt %r", prompt.text)
        normalized.setdefault(prompt.text, prompt)
    if at_least_one and not normalized:
        raise ValueError("text mode needs at least one prompt, e.g. 'cat'")
    return list(normalized.values())


def sanitize_boxes(boxes_xyxy, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
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


def describe_box_problems(n_given: int, n_kept: int, what: str) -> str | None:
    """A one-line warning for dropped boxes, or ``None`` when every box was kept."""
    dropped = n_given - n_kept
    if dropped <= 0:
        return None
    noun = "box" if n_given == 1 else "boxes"
    return f"dropped {dropped} of {n_given} {what} {noun}: degenerate (NaN, inverted, zero area) or outside the image"


@dataclass
class ObjectPrompt:
    """One object to segment with the tracker, SAM1-style.

    Attributes:
        label: what its mask is called
        points: ``(n, 2)`` pixel ``xy`` points
        point_labels: ``(n,)`` 1 (the object is here) or 0 (it is not)
        box: a pixel ``xyxy`` box around it, or ``None``
        mask_key: the key of a previous mask's low-resolution logits in the engine's mask cache, to
            refine rather than restart (``None``: none)
    """

    label: str | None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box: np.ndarray | None = None
    mask_key: object = None

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
        self.point_labels = np.asarray(self.point_labels, dtype=np.int64).reshape(-1)
        if len(self.point_labels) != len(self.points):
            raise ValueError(f"{len(self.points)} points but {len(self.point_labels)} point labels")
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32).reshape(4)


@dataclass
class ImagePrompts:
    """The prompts of one image, boxes in pixel ``xyxy``.

    Attributes:
        texts: text prompts (``text``/``exemplars`` modes): :class:`TextPrompt` or plain strings
        boxes: ``(N, 4)`` prompt boxes: one mask each (``boxes``) or visual examples (``exemplars``)
        box_labels: a label per prompt box (``None`` where unknown)
        negative_boxes: ``(M, 4)`` boxes of things that are not wanted
        objects: the prompt objects of ``points`` mode (:class:`ObjectPrompt`)
    """

    texts: tuple = ()
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_labels: tuple[str | None, ...] = ()
    negative_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    objects: tuple = ()

    def __post_init__(self):
        self.objects = tuple(self.objects)
        self.texts = tuple(p if isinstance(p, TextPrompt) else TextPrompt(str(p)) for p in self.texts)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.negative_boxes = np.asarray(self.negative_boxes, dtype=np.float32).reshape(-1, 4)
        self.box_labels = tuple(self.box_labels) if len(self.box_labels) else (None,) * len(self.boxes)
        if len(self.box_labels) != len(self.boxes):
            raise ValueError(f"{len(self.boxes)} prompt boxes but {len(self.box_labels)} box labels")


@dataclass
class Query:
    """One question to SAM3 about one image.

    Attributes:
        label: what hits are called (the prompt's label, the examples' label, or the box's label)
        text: the text SAM3 reads, or ``None`` (a query of the tracker head)
        positive_boxes, negative_boxes: ``(n, 4)`` pixel ``xyxy`` boxes (a tracker query: at most
            one positive box)
        points, point_labels: ``(p, 2)`` pixel ``xy`` points and their labels 1/0 (tracker queries)
        prompt_index: the prompt box or object this query answers (tracker modes), else ``-1``
        threshold: the score above which its hits are kept (detector queries)
        mask_key: the key of a previous mask to refine (tracker queries), or ``None``
    """

    label: str | None
    text: str | None
    positive_boxes: np.ndarray
    negative_boxes: np.ndarray
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prompt_index: int = -1
    threshold: float = 0.5
    mask_key: object = None


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


def _centres_inside(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    inside = (points[:, 0] >= box[0]) & (points[:, 0] <= box[2]) & (points[:, 1] >= box[1]) & (points[:, 1] <= box[3])
    return points[inside]


def build_queries(mode: str, prompts: ImagePrompts, threshold: float = 0.5) -> list[Query]:
    """The queries the engine runs for one image's prompts in ``mode`` (see the module docstring).

    ``threshold`` is the run's score threshold, for prompts without one of their own.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; the valid modes are {', '.join(MODES)}")
    negatives = prompts.negative_boxes

    def own(prompt: TextPrompt) -> float:
        return threshold if prompt.threshold is None else prompt.threshold

    if mode == "text":
        return [Query(p.name, p.text, _empty_boxes(), negatives, threshold=own(p)) for p in prompts.texts]

    if mode == "exemplars":
        if not len(prompts.boxes):
            return []
        if prompts.texts:
            return [Query(p.name, p.text, prompts.boxes, negatives, threshold=own(p)) for p in prompts.texts]
        queries = []
        for label in dict.fromkeys(prompts.box_labels):  # distinct labels, in order of appearance
            chosen = np.array([lab == label for lab in prompts.box_labels])
            queries.append(Query(label, VISUAL_PROMPT, prompts.boxes[chosen], negatives, threshold=threshold))
        return queries

    centres = np.stack([(negatives[:, 0] + negatives[:, 2]) / 2, (negatives[:, 1] + negatives[:, 3]) / 2], axis=1)
    if mode == "points":
        return [_object_query(index, obj, centres) for index, obj in enumerate(prompts.objects)]
    if mode == "auto":
        return []  # the engine lays the grid: it needs the image's size
    queries = []
    for index, (box, label) in enumerate(zip(prompts.boxes, prompts.box_labels)):
        inside = _centres_inside(centres, box)
        queries.append(Query(label, None, box[None], _empty_boxes(), inside, np.zeros(len(inside), np.int64), index))
    return queries


def _object_query(index: int, obj: ObjectPrompt, negative_centres: np.ndarray) -> Query:
    points = np.concatenate([obj.points, negative_centres]).astype(np.float32)
    labels = np.concatenate([obj.point_labels, np.zeros(len(negative_centres), np.int64)])
    box = obj.box[None] if obj.box is not None else _empty_boxes()
    return Query(obj.label, None, box, _empty_boxes(), points, labels, index, mask_key=obj.mask_key)


def grid_points(points_per_side: int, width: int, height: int) -> np.ndarray:
    """``points_per_side`` x ``points_per_side`` pixel points evenly covering an image, each at the
    centre of its cell (as SAM's automatic mask generator lays them): ``(n, 2)`` float32."""
    offsets = (np.arange(points_per_side, dtype=np.float32) + 0.5) / points_per_side
    xs, ys = np.meshgrid(offsets * width, offsets * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)

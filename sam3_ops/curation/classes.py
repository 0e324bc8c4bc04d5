"""The classes of a ground-truth field as text prompts: shared by QA review and calibration.

Its own module so that :mod:`~sam3_ops.curation.review` can use a calibration
(:mod:`~sam3_ops.curation.calibrate`) while calibration uses these helpers, without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def validate_classes(classes: Iterable[str]) -> list[str]:
    """Classes as text prompts: strings with words, duplicates dropped (first kept).

    Raises:
        ValueError: a class that is not a string or is blank (an empty-string label cannot be a prompt)
    """
    if isinstance(classes, str):
        classes = [classes]
    cleaned: list[str] = []
    for i, name in enumerate(classes):
        if not isinstance(name, str):
            raise ValueError(f"class {i} is a {type(name).__name__} ({name!r}); classes must be strings")
        if not name.strip():
            raise ValueError(
                f"class {i} is {name!r}: blank classes cannot be text prompts; relabel those detections "
                "or pass classes= without it"
            )
        if name not in cleaned:
            cleaned.append(name)
    if not cleaned:
        raise ValueError("there are no classes to review")
    return cleaned


def review_classes(samples, gt_field: str, classes: Sequence[str] | None) -> list[str]:
    """The classes to review: ``classes``, or every label of ``gt_field`` (none of them blank)."""
    if classes is None:
        classes = samples.distinct(f"{gt_field}.detections.label")
        blank = [label for label in classes if not isinstance(label, str) or not label.strip()]
        if blank:
            raise ValueError(
                f"gt_field {gt_field!r} has detections labelled {blank[0]!r}: blank labels cannot be text prompts; "
                "relabel them, or pass classes= to review the others"
            )
    return validate_classes(classes)

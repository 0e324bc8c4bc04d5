"""PR curves of a calibration (:func:`sam3_ops.calibrate`) as FiftyOne plots.

:func:`plot_calibration_curves` draws one precision-recall curve per candidate wording with
FiftyOne's own PR-curve plot (:func:`fiftyone.core.plots.plot_pr_curves`, the one evaluation
results draw), so a calibration looks like any other PR curve in FiftyOne. That plot takes
precision at shared recall levels; each wording's curve is put on COCO's 101 recall levels the
way COCO's AP reads it (the best precision at that recall or more), so the AP in the legend is
the calibration's own AP of that wording.
"""

from __future__ import annotations

import numpy as np

#: COCO's recall levels (the AP's 101 points)
RECALL_LEVELS = np.linspace(0.0, 1.0, 101)


def plot_calibration_curves(result, label: str | None = None, **kwargs):
    """The PR curves of a calibration: one trace per candidate wording of each class.

    Args:
        result: a :class:`~sam3_ops.curation.calibrate.CalibrationResult`
            (``sam3_ops.calibrate(...)`` or ``sam3_ops.get_calibration(dataset, key)``)
        label (None): only this class's wordings; ``None``: every class
        **kwargs: passed to :func:`fiftyone.core.plots.plot_pr_curves` (``title``, plotly layout
            options such as ``height``)

    Returns:
        a plotly figure (in a notebook, FiftyOne's ``PlotlyNotebookPlot`` of it), a trace per
        wording named ``"<class>: <wording>"`` (``(chosen)`` after the chosen one), with the
        threshold of each point in its hover

    Raises:
        ValueError: ``label`` is not a class of the calibration
    """
    import fiftyone.core.plots as fop

    precisions, thresholds, names = calibration_pr_arrays(result, label)
    title = kwargs.pop("title", f"SAM3 calibration '{result.key}' on '{result.gt_field}' (IoU {result.iou:g})")
    return fop.plot_pr_curves(precisions, RECALL_LEVELS, names, thresholds=thresholds, title=title, **kwargs)


def calibration_pr_arrays(result, label: str | None = None) -> tuple[np.ndarray, list[list], list[str]]:
    """The curves of :func:`plot_calibration_curves` as arrays: ``(precisions, thresholds, names)``,
    one row per wording at :data:`RECALL_LEVELS` (a threshold is ``None`` where the wording never
    reaches that recall)."""
    curves = result.curves
    if label is not None and label not in curves:
        raise ValueError(f"label {label!r} is not a class of this calibration; its classes are {sorted(curves)}")
    chosen = {row.label: row.text for row in result.classes}
    precisions, thresholds, names = [], [], []
    for class_label, wordings in curves.items():
        if label is not None and class_label != label:
            continue
        for text, curve in wordings.items():
            precision, threshold = interpolated_curve(curve)
            precisions.append(precision)
            thresholds.append(threshold)
            names.append(f"{class_label}: {text}" + (" (chosen)" if chosen.get(class_label) == text else ""))
    return np.array(precisions, dtype=float).reshape(len(names), len(RECALL_LEVELS)), thresholds, names


def interpolated_curve(curve: dict) -> tuple[np.ndarray, list]:
    """One wording's curve (``thresholds``, ``precision``, ``recall``, descending thresholds) at
    :data:`RECALL_LEVELS`: the best precision at that recall or more, and the threshold giving it."""
    precision = np.asarray(curve["precision"], dtype=float)
    recall = np.asarray(curve["recall"], dtype=float)
    scores = list(curve["thresholds"])
    at_levels = np.zeros(len(RECALL_LEVELS))
    threshold: list = [None] * len(RECALL_LEVELS)
    if not len(precision):
        return at_levels, threshold
    # the index of the best precision at each point or after it, the first on ties (recall does not
    # fall as the threshold does): the first point from there on that is the best of its own suffix
    suffix_best = np.maximum.accumulate(precision[::-1])[::-1]
    peaks = np.flatnonzero(precision == suffix_best)
    best_after = peaks[np.searchsorted(peaks, np.arange(len(precision)))]
    starts = np.searchsorted(recall, RECALL_LEVELS, side="left")
    for level, start in enumerate(starts):
        if start < len(precision):
            at_levels[level] = precision[best_after[start]]
            threshold[level] = float(scores[best_after[start]])
    return at_levels, threshold

"""What produced a SAM3 field: the settings of each run, kept with the dataset so it can be re-run.

Stored in ``dataset.info["sam3_ops_runs"][label_field]`` (a plain dict, shown in the App's dataset
info): model path, mode, prompts, thresholds, prompt/negative fields, and when. The refinement
panel reads it to re-run a sample with the same prompts plus negative boxes.
"""

from __future__ import annotations

from datetime import datetime, timezone

INFO_KEY = "sam3_ops_runs"


def ensure_detections_field(dataset, label_field: str) -> bool:
    """Declares ``label_field`` as a ``Detections`` field if the dataset's schema lacks it.

    Two processes that add different fields to one dataset at once can lose one declaration:
    each saves the dataset's field list as it knew it (FiftyOne does not merge them). The
    values are in the samples, but FiftyOne will not read them until the field is declared again.

    Returns:
        whether the declaration had to be restored
    """
    import fiftyone as fo

    dataset = dataset._dataset if hasattr(dataset, "_dataset") else dataset
    dataset.reload()
    if dataset.has_sample_field(label_field):
        return False
    dataset.add_sample_field(label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    return True


def record_run(dataset, label_field: str, model, prompt_field: str | None = None, negative_field: str | None = None) -> dict:
    """Records the settings of ``model`` (a :class:`~sam3_ops.model.Sam3Model`) as the run that wrote
    ``label_field``, after making sure the field is declared (see :func:`ensure_detections_field`)."""
    config = model.config
    record = {
        "model_path": str(config.model_path),
        "mode": config.mode,
        "prompts": list(config.prompts),
        "threshold": float(config.threshold),
        "mask_threshold": float(config.mask_threshold),
        "prompt_field": prompt_field,
        "negative_field": negative_field,
        "timestamp": datetime.now(timezone.utc).isoformat(),
    }
    dataset = dataset._dataset if hasattr(dataset, "_dataset") else dataset
    ensure_detections_field(dataset, label_field)
    runs = dict(dataset.info.get(INFO_KEY) or {})
    runs[label_field] = record
    dataset.info[INFO_KEY] = runs
    dataset.save()
    return record


def get_run(dataset, label_field: str) -> dict | None:
    """The recorded settings of the run that wrote ``label_field``, or ``None``."""
    dataset = dataset._dataset if hasattr(dataset, "_dataset") else dataset
    return (dataset.info.get(INFO_KEY) or {}).get(label_field)

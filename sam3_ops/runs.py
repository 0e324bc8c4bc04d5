"""What produced a SAM3 field: the settings of each run, kept with the dataset so it can be re-run.

Stored in ``dataset.info["sam3_ops_runs"][label_field]`` (a plain dict, shown in the App's dataset
info): model path, mode, prompts, thresholds, prompt/negative fields, and when. The refinement
panel reads it to re-run a sample with the same prompts plus negative boxes.
"""

from __future__ import annotations

from datetime import datetime, timezone

INFO_KEY = "sam3_ops_runs"


def record_run(dataset, label_field: str, model, prompt_field: str | None = None, negative_field: str | None = None) -> dict:
    """Records the settings of ``model`` (a :class:`~sam3_ops.model.Sam3Model`) as the run that wrote ``label_field``."""
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
    dataset.reload()
    runs = dict(dataset.info.get(INFO_KEY) or {})
    runs[label_field] = record
    dataset.info[INFO_KEY] = runs
    dataset.save()
    return record


def get_run(dataset, label_field: str) -> dict | None:
    """The recorded settings of the run that wrote ``label_field``, or ``None``."""
    dataset = dataset._dataset if hasattr(dataset, "_dataset") else dataset
    return (dataset.info.get(INFO_KEY) or {}).get(label_field)

"""sam3_ops: SAM3 (Segment Anything 3) for dataset curation in FiftyOne.

The public API::

    import sam3_ops

    model = sam3_ops.load_model("facebook/sam3", mode="text", prompts=["cat", "dog"])
    dataset.apply_model(model, label_field="sam3", batch_size=8, num_workers=4)

    sam3_ops.segment(dataset, "sam3", prompts=["cat", "dog"])   # apply_model + run record

    boxes = sam3_ops.load_model("facebook/sam3", mode="boxes")
    dataset.apply_model(boxes, label_field="gt_masks", prompt_field="ground_truth")

The package is layered; a layer imports only the layers below it:

- ``sam3_ops.core``: the engine (torch + transformers; never fiftyone)
- ``sam3_ops.sdk``: settings, conversions, the FiftyOne model, run records, ``segment``
- ``sam3_ops.curation``: QA review, box-to-mask upgrade, accept, refinement
- ``sam3_ops.app``: the App's operators and panel

Nothing heavy is imported until a name is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.4.0"

#: public name -> the module that defines it
_EXPORTS = {
    "DEFAULT_MODEL": "sam3_ops.core.checkpoint",
    "ModelLoadError": "sam3_ops.core.checkpoint",
    "MODES": "sam3_ops.core.queries",
    "Sam3Engine": "sam3_ops.core.engine",
    "get_engine": "sam3_ops.core.pool",
    "Sam3Settings": "sam3_ops.sdk.settings",
    "SettingsError": "sam3_ops.sdk.settings",
    "Sam3Model": "sam3_ops.sdk.model",
    "Sam3VideoModel": "sam3_ops.sdk.video",
    "load_model": "sam3_ops.sdk.segment",
    "segment": "sam3_ops.sdk.segment",
    "without_results": "sam3_ops.sdk.segment",
    "SegmentResult": "sam3_ops.sdk.runs",
    "get_run": "sam3_ops.sdk.runs",
    "record_run": "sam3_ops.sdk.runs",
    "ShardedRun": "sam3_ops.sdk.shards",
    "ShardStatus": "sam3_ops.sdk.shards",
    "shard_status": "sam3_ops.sdk.shards",
    "reconcile": "sam3_ops.sdk.shards",
    "cancel_shards": "sam3_ops.sdk.shards",
    "resume_shards": "sam3_ops.sdk.shards",
    "review_annotations": "sam3_ops.curation.review",
    "calibrate": "sam3_ops.curation.calibrate",
    "get_calibration": "sam3_ops.curation.calibrate",
    "CalibrationResult": "sam3_ops.curation.calibrate",
    "plot_calibration_curves": "sam3_ops.curation.calibration_plots",
    "upgrade_boxes_to_masks": "sam3_ops.curation.edits",
    "accept_reviewed": "sam3_ops.curation.edits",
    "restore_field": "sam3_ops.curation.edits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sam3_ops' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

"""The core: SAM3 itself, with torch, transformers, numpy and PIL only (NEVER fiftyone), so the
GPU benchmark and its tests run on a machine without fiftyone.

- :mod:`~sam3_ops.core.checkpoint`: checkpoint paths, devices, loading every head of every layout
- :mod:`~sam3_ops.core.queries`: text prompts (images and videos alike), an image's prompts and the
  queries each mode runs (pure)
- :mod:`~sam3_ops.core.images`: image decoding (pure)
- :mod:`~sam3_ops.core.masks`: mask math on the device (crops, upsampling, memory budgets)
- :mod:`~sam3_ops.core.engine`: :class:`~sam3_ops.core.engine.Sam3Engine`, batches on the device
- :mod:`~sam3_ops.core.pool`: one image and one video engine per set of weights in a process
"""

"""The SDK layer: FiftyOne meets the core.

- :mod:`~sam3_ops.sdk.settings`: :class:`~sam3_ops.sdk.settings.Sam3Settings`, the one settings object,
  and ``RunOptions``: both checked by type and range before anything is written
- :mod:`~sam3_ops.sdk.convert`: FiftyOne labels <-> the engine's pixel boxes and masks (pure)
- :mod:`~sam3_ops.sdk.model`: the FiftyOne ``Model`` + ``GetItem`` for ``apply_model``: the one inference path
- :mod:`~sam3_ops.sdk.fields`: label-field discovery and checks
- :mod:`~sam3_ops.sdk.runs`: run records on FiftyOne's runs framework, ``SegmentResult``
- :mod:`~sam3_ops.sdk.images`: the image run (``apply_model`` + run record) in this process
- :mod:`~sam3_ops.sdk.video`: video collections (``Sam3VideoModel``, streamed frame writes, resume per video)
- :mod:`~sam3_ops.sdk.shardstore`: a sharded run's state in the execution store (its keys, its operations)
- :mod:`~sam3_ops.sdk.shards`: sharded runs on FiftyOne's delegated queue
- :mod:`~sam3_ops.sdk.workers`: ``python -m sam3_ops.sdk.workers``, one ``fiftyone delegated launch`` per GPU
- :mod:`~sam3_ops.sdk.segment`: ``load_model``, ``segment`` (checks, then dispatches to images, video or
  shards), ``without_results``
"""

"""The SDK layer: FiftyOne meets the core.

- :mod:`~sam3_ops.sdk.settings`: :class:`~sam3_ops.sdk.settings.Sam3Settings`, the one settings object
  (its engine settings default to the core's), and ``RunOptions``: both checked by type and range
  before anything is written; one table of which setting applies to which mode and medium
- :mod:`~sam3_ops.sdk.convert`: FiftyOne labels <-> the engine's pixel boxes and masks (pure)
- :mod:`~sam3_ops.sdk.runs`: ``Run`` (record -> add parts -> finish), the one way every door records a
  run; ``RunSummary`` (adds with ``+``) and ``SegmentResult``; run records on FiftyOne's runs framework
- :mod:`~sam3_ops.sdk.model`: the FiftyOne ``Model`` + ``GetItem`` for ``apply_model``: the one inference path
- :mod:`~sam3_ops.sdk.fields`: label-field discovery and checks
- :mod:`~sam3_ops.sdk.media`: the ``Media`` interface and ``segment_in_process``, the one in-process run of
  either medium; ``build_engine`` on the core's one engine pool
- :mod:`~sam3_ops.sdk.images`, :mod:`~sam3_ops.sdk.video`: the two media (``IMAGES``: ``apply_model`` in
  batches; ``VIDEOS``: ``Sam3VideoModel``, streamed frame writes, resume per video)
- :mod:`~sam3_ops.sdk.shardstore`: a sharded run's state in the execution store (its keys, its operations)
- :mod:`~sam3_ops.sdk.shards`: sharded runs on FiftyOne's delegated queue (queue, status, reconcile, cancel)
- :mod:`~sam3_ops.sdk.shard_worker`: one shard, run by a worker
- :mod:`~sam3_ops.sdk.workers`: ``python -m sam3_ops.sdk.workers``, one ``fiftyone delegated launch`` per GPU
- :mod:`~sam3_ops.sdk.segment`: ``load_model``, ``segment`` (checks, then dispatches to images, videos or
  shards with one signature), ``without_results``
"""

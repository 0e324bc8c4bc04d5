"""The SDK layer: FiftyOne meets the core.

- :mod:`~sam3_ops.sdk.settings`: :class:`~sam3_ops.sdk.settings.Sam3Settings`, the one settings object
- :mod:`~sam3_ops.sdk.convert`: FiftyOne labels <-> the engine's pixel boxes and masks (pure)
- :mod:`~sam3_ops.sdk.model`: the FiftyOne ``Model`` + ``GetItem`` for ``apply_model``: the one inference path
- :mod:`~sam3_ops.sdk.fields`: label-field discovery and checks
- :mod:`~sam3_ops.sdk.runs`: run records on FiftyOne's runs framework
- :mod:`~sam3_ops.sdk.segment`: ``load_model``, ``segment`` (apply_model + run record), ``without_results``
"""

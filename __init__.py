"""The repository's two entry points, each importing nothing heavy until FiftyOne calls it:

- the FiftyOne plugin (``fiftyone.yml``): :func:`register` registers the operators and the panel;
- the FiftyOne model-zoo source (``manifest.json``): :func:`download_model`, :func:`load_model`,
  :func:`resolve_input` and :func:`parse_parameters` hand off to :mod:`sam3_ops.app.zoo`.

Neither needs the other: a plugin install never reads ``manifest.json``, a registered zoo source
never calls :func:`register`.
"""

import os
import sys

# The App and FiftyOne's model zoo import this file by path; put its directory first on the path so
# that the operators, the zoo's models and SDK users share one ``sam3_ops`` package (and one in-memory
# model cache).
_PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
if _PLUGIN_DIR not in sys.path:
    sys.path.insert(0, _PLUGIN_DIR)


def register(p):
    from sam3_ops.app.calibrate_operators import OPERATORS as CALIBRATE_OPERATORS
    from sam3_ops.app.operators import OPERATORS
    from sam3_ops.app.panel import PANELS
    from sam3_ops.app.qa_operators import OPERATORS as QA_OPERATORS

    for cls in (*OPERATORS, *QA_OPERATORS, *CALIBRATE_OPERATORS, *PANELS):
        p.register(cls)


# -- FiftyOne's remote model zoo (see sam3_ops.app.zoo) ---------------------------------------------


def download_model(model_name, model_path):
    """Downloads the zoo model's weights (``facebook/sam3``) to ``model_path``."""
    from sam3_ops.app import zoo

    zoo.download_model(model_name, model_path)


def load_model(model_name, model_path, **kwargs):
    """The zoo model: ``sam3_ops.load_model`` on its download, ``kwargs`` its settings."""
    from sam3_ops.app import zoo

    return zoo.load_model(model_name, model_path, **kwargs)


def resolve_input(model_name, ctx):
    """The zoo model's settings form in FiftyOne's "Apply zoo model" operator."""
    from sam3_ops.app import zoo

    return zoo.resolve_input(model_name, ctx)


def parse_parameters(model_name, ctx, params):
    """The form's values as ``load_model`` keywords (``params`` changed in place)."""
    from sam3_ops.app import zoo

    zoo.parse_parameters(model_name, ctx, params)

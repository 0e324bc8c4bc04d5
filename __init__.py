"""FiftyOne plugin entry point: registers the sam3_ops operators and panel. Nothing else."""

import os
import sys

# The App imports this file by path; put the plugin directory first on the path so that the
# operators and SDK users share one ``sam3_ops`` package (and one in-memory model cache).
_PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
if _PLUGIN_DIR not in sys.path:
    sys.path.insert(0, _PLUGIN_DIR)


def register(p):
    from sam3_ops.app.operators import OPERATORS
    from sam3_ops.app.panel import PANELS
    from sam3_ops.app.qa_operators import OPERATORS as QA_OPERATORS

    for cls in (*OPERATORS, *QA_OPERATORS, *PANELS):
        p.register(cls)

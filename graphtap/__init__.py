"""graphtap: expose any intermediate tensor of a SavedModel or GraphDef as an output.

    report = graphtap.tap("model", "model_tapped", ops=["Relu"], names=[".*/conv1/.*"])

`tap`, `list_targets` and `profile_times` read and write protobufs only: they never run
the model, and importing graphtap imports neither TensorFlow nor numpy. What runs models
(`verify`, `dump`, `activations`, `profile`, `export`, `compare`) is loaded on first use.
"""

import importlib

from graphtap.rewrite.tapping import Report, TapRecord, list_targets, profile_times, tap
from graphtap.errors import GraphtapError
from graphtap.options import TapOptions

# Loaded on first use: they import numpy or TensorFlow.
_LAZY = {"NpyFile": "run.dumping", "TFRecord": "run.dumping", "activations": "run.dumping",
         "dump": "run.dumping", "Verification": "run.verification", "verify": "run.verification",
         "profile": "run.profiling", "export": "run.export", "compare": "run.compare"}

__all__ = ["GraphtapError", "NpyFile", "Report", "TFRecord", "TapOptions", "TapRecord",
           "Verification", "activations", "compare", "dump", "export", "list_targets", "profile",
           "profile_times", "tap", "verify"]
__version__ = "0.1.0"


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graphtap' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"graphtap.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | _LAZY.keys())

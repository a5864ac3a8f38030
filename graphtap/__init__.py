"""graphtap: expose any intermediate tensor of a SavedModel or GraphDef as an output.

    report = graphtap.tap("model", "model_tapped", names=[".*/Relu"], ops=["Softmax"])

Rewriting reads and writes protobufs only; it never runs the model or imports the
TensorFlow runtime.
"""

import importlib

from graphtap.api import Report, TapRecord, list_targets, profile, profile_times, tap
from graphtap.errors import GraphtapError
from graphtap.hook import export

# Loaded on first use: they import numpy, which `tap` and `list` never need, and a build
# pipeline runs the command once per model.
_LAZY = {"NpyFile": "dumping", "TFRecord": "dumping", "activations": "dumping",
         "dump": "dumping", "Verification": "verification", "verify": "verification"}

__all__ = ["GraphtapError", "NpyFile", "Report", "TFRecord", "TapRecord", "Verification",
           "activations", "dump", "export", "list_targets", "profile", "profile_times", "tap",
           "verify"]
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

"""graphtap: expose any intermediate tensor of a SavedModel or GraphDef as an output.

    report = graphtap.tap("model", "model_tapped", names=[".*/Relu"], ops=["Softmax"])

Rewriting reads and writes protobufs only; it never runs the model or imports the
TensorFlow runtime.
"""

from graphtap.api import Report, TapRecord, list_targets, profile, profile_times, tap
from graphtap.dumping import NpyFile, TFRecord, activations, dump
from graphtap.errors import GraphtapError
from graphtap.hook import export
from graphtap.verification import Verification, verify

__all__ = ["GraphtapError", "NpyFile", "Report", "TFRecord", "TapRecord", "Verification",
           "activations",
           "dump", "export", "list_targets", "profile", "profile_times", "tap", "verify"]
__version__ = "0.1.0"


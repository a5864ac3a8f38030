"""graphtap: expose any intermediate tensor of a SavedModel or GraphDef as an output.

    report = graphtap.tap("model", "model_tapped", names=[".*/Relu"], ops=["Softmax"])

Rewriting reads and writes protobufs only; it never runs the model or imports the
TensorFlow runtime.
"""

from graphtap.api import Report, TapRecord, list_targets, tap
from graphtap.errors import GraphtapError

__all__ = ["GraphtapError", "Report", "TapRecord", "export", "list_targets", "tap"]
__version__ = "0.1.0"


def export(model_or_module, export_dir, **tap_options):
    """Saves a Keras model or tf.Module and taps it in one call; see `graphtap.export`."""
    from graphtap.export import export as _export  # imports TensorFlow

    return _export(model_or_module, export_dir, **tap_options)

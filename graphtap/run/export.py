"""Export hook: save a Keras model or tf.Module and tap it, in one call."""

import os
import shutil
import tempfile

from graphtap.rewrite import tapping
from graphtap.options import TapOptions


def export(model_or_module, export_dir, signatures=None, options=None, **changes):
    """Saves `model_or_module` (Keras 3 `model.export`, else `tf.saved_model.save` with
    `signatures`) and writes its tapped copy to `export_dir`; returns the tap Report.

    options, changes: the tap's, as `graphtap.tap` takes them (a TapOptions, and options
    by name: ops, names, overwrite, ...). The untapped SavedModel is written to a
    temporary directory beside `export_dir` and removed.
    """
    import tensorflow as tf

    options = TapOptions.of(options, **changes)  # a bad option fails before the save

    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".graphtap-export-", dir=parent)
    try:
        saved = os.path.join(staging, "saved_model")
        if hasattr(model_or_module, "export") and signatures is None:
            model_or_module.export(saved, verbose=False)
        else:
            tf.saved_model.save(model_or_module, saved, signatures=signatures)
        # The untapped copy is removed below, so the output may take its variables' files.
        return tapping.tap(saved, export_dir, options, link_variables=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

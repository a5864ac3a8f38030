"""Loading a SavedModel to run it (verify, dump, profile): the libraries that define its
custom ops first, then TensorFlow's loaders, whose failures become one-line graphtap errors.
Imports TensorFlow.
"""

import importlib
import os
import re

from graphtap import errors
from graphtap.rewrite import source_files

_UNREGISTERED = re.compile(r"Op type not registered '([^']+)'")


def load_custom_ops(specs):
    """Registers the ops that `specs` define with TensorFlow, before a model is loaded.

    specs: an iterable of strings; one ending in `.so` is a file for tf.load_op_library,
      any other a Python module to import (`tensorflow_text` registers its ops on import).
    A module that cannot be imported or a library that cannot be loaded is one error
    naming it.
    """
    if isinstance(specs, str):
        specs = [specs]
    for spec in specs or ():
        if spec.endswith(".so"):
            _load_library(spec)
        else:
            _import_module(spec)


def _load_library(path):
    import tensorflow as tf

    if not os.path.isfile(path):
        raise errors.InputNotFound("no such custom op library", path)
    try:
        tf.load_op_library(path)
    except Exception as error:  # noqa: BLE001 (TensorFlow raises many kinds)
        raise errors.BadArgument(f"cannot load custom op library: {_first_line(error)}",
                                 path) from None


def _import_module(name):
    try:
        importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 (an import can raise anything)
        raise errors.BadArgument(f"cannot import custom op module: {_first_line(error)}",
                                 name) from None


def saved_model(model_dir, tags):
    """tf.saved_model.load(model_dir, tags): the TF2 object, or a graphtap error."""
    import tensorflow as tf

    source_files.check_tree(model_dir)  # TensorFlow would block on a FIFO in it
    try:
        return tf.saved_model.load(model_dir, tags=tags)
    except Exception as error:  # noqa: BLE001 (TensorFlow raises many kinds)
        raise load_error(error, model_dir) from None


def session(model_dir, tags):
    """The TF Serving path: (a TF1 Session holding the model, its MetaGraphDef)."""
    import tensorflow as tf

    source_files.check_tree(model_dir)  # TensorFlow would block on a FIFO in it
    try:
        loaded = tf.compat.v1.Session(graph=tf.Graph())
        with loaded.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.load(loaded, tags, model_dir)
    except Exception as error:  # noqa: BLE001 (TensorFlow raises many kinds)
        raise load_error(error, model_dir) from None
    return loaded, meta_graph


def load_error(error, model_dir):
    """The graphtap error for TensorFlow's `error` loading or running `model_dir`:
    errors.UnknownOp naming the op when it is one TensorFlow does not know, else
    errors.CorruptModel with TensorFlow's first line."""
    found = _UNREGISTERED.search(str(error))
    if found:
        return errors.UnknownOp(f"op '{found.group(1)}' is not registered in TensorFlow: "
                                "load the library that defines it before the model",
                                model_dir)
    return errors.CorruptModel(f"TensorFlow cannot load it: {_first_line(error)}", model_dir)


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def random_inputs(specs, batch_size, rng, where=None, inner=1):
    """{name: a seeded random value} for signature inputs `specs` ({name: (tf.DType,
    dims with None where unknown)}): an unknown first dimension is `batch_size`, the
    other unknown ones `inner`. Floats are normal; integers are zeros, valid for anything
    they index (token and segment ids, positions), where random values may not be; bools
    random; strings empty. Another dtype is an error naming the input, which must then be given."""
    import numpy as np
    import tensorflow as tf

    feed = {}
    for name, (dtype, dims) in specs.items():
        shape = [(inner if i else batch_size) if d is None else d for i, d in enumerate(dims)]
        if dtype.is_floating:
            value = rng.standard_normal(shape)
        elif dtype.is_integer:
            value = np.zeros(shape)
        elif dtype.is_bool:
            value = rng.integers(0, 2, shape).astype(bool)
        elif dtype == tf.string:
            value = np.full(shape, b"", dtype=object)
        else:
            raise errors.BadArgument(f"cannot make a random {dtype.name} input '{name}'; "
                                     "give it", where)
        feed[name] = np.asarray(value, dtype=dtype.as_numpy_dtype)
    return feed

"""TensorFlow's protobuf message classes, without importing the TensorFlow runtime.

`import tensorflow` costs seconds and hundreds of MiB before a byte is read, while
rewriting a SavedModel is protobuf work. The generated `_pb2` modules of the installed
TensorFlow embed their serialized file descriptors; we read those out of the source
files (without executing them or `tensorflow/__init__.py`) into a private descriptor
pool and build message classes from it. Where that is impossible (an unusual install),
we fall back to TensorFlow's own modules. Setting GRAPHTAP_PROTOS=tensorflow forces
that fallback (to compare the two, or to work around a broken install).

Messages from the private pool are not instances of TensorFlow's classes: hand them
across by serialization (`tf_msg.ParseFromString(ours.SerializeToString())`).
"""

import ast
import importlib
import importlib.util
import os
import re

from absl import logging
from google.protobuf import descriptor_pool, message_factory

# The generated modules whose messages graphtap uses; their dependencies come along.
_ROOT_MODULES = (
    "tensorflow.core.protobuf.saved_model_pb2",
    "tensorflow.tsl.profiler.protobuf.xplane_pb2",
)

_IMPORT_RE = re.compile(r"^from ([\w.]+) import (\w+_pb2) as ", re.M)
_SERIALIZED_RE = re.compile(r"AddSerializedFile\((b'(?:[^'\\]|\\.)*')\)")


def _site_root():
    spec = importlib.util.find_spec("tensorflow")  # locates the package, runs nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("TensorFlow is not installed")
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def _add_module(pool, module, root, done):
    """Adds the file descriptor embedded in generated module `module` (and its deps)."""
    if module in done:
        return
    done.add(module)
    if module.startswith("google.protobuf."):
        # Well-known types ship with protobuf itself; importing them is cheap.
        pool.AddSerializedFile(importlib.import_module(module).DESCRIPTOR.serialized_pb)
        return
    path = os.path.join(root, *module.split(".")) + ".py"
    with open(path, encoding="utf-8") as f:
        source = f.read()
    for package, name in _IMPORT_RE.findall(source):
        _add_module(pool, f"{package}.{name}", root, done)
    match = _SERIALIZED_RE.search(source)
    if match is None:
        raise ImportError(f"no serialized descriptor in {path}")
    pool.AddSerializedFile(ast.literal_eval(match.group(1)))


def _private_pool():
    pool = descriptor_pool.DescriptorPool()
    root, done = _site_root(), set()
    for module in _ROOT_MODULES:
        _add_module(pool, module, root, done)
    return pool


def _tensorflow_pool():
    for module in _ROOT_MODULES:
        importlib.import_module(module)
    return descriptor_pool.Default()


def _pool():
    if os.environ.get("GRAPHTAP_PROTOS") == "tensorflow":
        return _tensorflow_pool()
    try:
        return _private_pool()
    except (ImportError, OSError, TypeError, ValueError) as error:
        logging.debug("graphtap: private descriptor pool failed (%s); importing TensorFlow's",
                      error)
        return _tensorflow_pool()


POOL = _pool()


def _message(full_name):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


SavedModel = _message("tensorflow.SavedModel")
MetaGraphDef = _message("tensorflow.MetaGraphDef")
GraphDef = _message("tensorflow.GraphDef")
SignatureDef = _message("tensorflow.SignatureDef")
FunctionDef = _message("tensorflow.FunctionDef")
OpDef = _message("tensorflow.OpDef")
OpList = _message("tensorflow.OpList")
AttrValue = _message("tensorflow.AttrValue")
TensorShapeProto = _message("tensorflow.TensorShapeProto")
XSpace = _message("tensorflow.profiler.XSpace")


def _classes_of_fields(message_class, found):
    """Adds the class of every message type that `message_class` holds, at any depth."""
    for field in message_class.DESCRIPTOR.fields:
        field_type = field.message_type
        if field_type is not None and field_type.full_name not in found:
            found[field_type.full_name] = message_factory.GetMessageClass(field_type)
            _classes_of_fields(found[field_type.full_name], found)
    return found


# protobuf keeps the classes it makes for the types a message holds only while something
# else does, and a class is a reference cycle: without these references each read of a
# SavedModel would make them anew and leave the old ones to the garbage collector.
_HELD_CLASSES = _classes_of_fields(SavedModel, {})

_DATA_TYPE = POOL.FindEnumTypeByName("tensorflow.DataType")


def dtype_enum(name):
    """`'DT_FLOAT'` -> `1`."""
    return _DATA_TYPE.values_by_name[name].number


def dtype_name(dtype):
    """`1` -> `'float32'`: the name TensorFlow's Python API uses for a DataType value."""
    value = _DATA_TYPE.values_by_number.get(dtype)
    if value is None:
        return f"dtype_{dtype}"
    name = value.name[len("DT_"):].lower()
    return _PYTHON_DTYPE_NAMES.get(name, name)


# DataType enum names that differ from tf.dtypes names.
_PYTHON_DTYPE_NAMES = {"float": "float32", "double": "float64", "half": "float16"}

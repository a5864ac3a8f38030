"""Op definitions: which outputs a node has, what they are called, and their dtypes.

Definitions come from the model's own `meta_info_def.stripped_op_list` and function
library (a function's signature is the OpDef of ops that call it by name). Only an op
found in neither is looked up in TensorFlow's registry, read by a child process and
cached on disk (a frozen GraphDef carries no op definitions of its own).

TensorFlow's saver lists the ops of the outer graph and of the functions it calls (by a
call op's `f`, or by name), but not those of functions reached only through other attrs
(a While's body, an If's branches: meta_graph.ops_used_by_graph_def). So an OpDef is asked
for only where a node's outputs must be known; function references are read from attr
values (index.function_attrs), which need none.
"""

import collections
import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile

from absl import logging

from graphtap import errors
from graphtap.rewrite import protos
from graphtap.rewrite.op_kinds import kind_of_op

# The most outputs a node may have. An attr (`num` of an Unpack, `num_split` of a Split)
# says how many: a number a model can make as large as it likes, where every output costs
# graphtap (and TensorFlow, which builds an edge per output) memory and time. No real op
# comes near a million outputs; a million Output records take about 100 MB.
MAX_OUTPUTS = 1 << 20

_FUNC_TYPES = frozenset({"func", "list(func)"})

# One output tensor of a node: `arg` and `index` name it inside a function body
# (`node:arg:index`); its position in the node's flat output list names it in a graph.
Output = collections.namedtuple("Output", "arg index dtype")


class OpRegistry:
    """Looks up OpDefs for the ops of one meta graph (or GraphDef) and its library."""

    def __init__(self, stripped_op_list=(), functions=None):
        self._op_defs = {op_def.name: op_def for op_def in stripped_op_list}
        self._functions = functions or {}
        self._fixed_output_counts = {}  # op type -> output count, None if it varies by node
        self._output_arg_fields = {}  # op type -> _output_arg_fields of its OpDef
        self._may_refer = {}  # op type -> may_refer_to_functions

    def over(self, functions):
        """A registry of the same op definitions over another function library (one the
        rewrite extended); the definitions read from TensorFlow's registry are shared."""
        registry = OpRegistry((), functions)
        registry._op_defs = self._op_defs
        return registry

    def op_def(self, op_type):
        if op_type in self._functions:  # a function called by name
            return self._functions[op_type].signature
        op_def = self._op_defs.get(op_type)
        if op_def is None:
            op_def = self._op_defs[op_type] = _registered_op_def(op_type)
        return op_def

    def may_refer_to_functions(self, op_type):
        """Whether a node of this op may hold a `func` or `list(func)` attr: yes for an op
        that runs functions, no for one whose definition at hand has no such attr, and yes
        for one with no definition at hand (its attr values are then read: a model lists no
        OpDef for ops used only inside control flow). Decided once per op type, so that the
        attrs of the many nodes that cannot refer to a function are never read."""
        found = self._may_refer.get(op_type)
        if found is None:
            if kind_of_op(op_type) is not None or not self.defines(op_type):
                found = True
            else:
                found = any(attr.type in _FUNC_TYPES for attr in self.op_def(op_type).attr)
            self._may_refer[op_type] = found
        return found

    def defines(self, op_type):
        """Whether the op's definition is at hand: in the model, or already read from
        TensorFlow's registry (asking for it then starts no child process)."""
        return op_type in self._functions or op_type in self._op_defs

    def fixed_output_count(self, op_type):
        """How many outputs every node of this op has; None if it varies by node."""
        if op_type not in self._fixed_output_counts:
            args = self.op_def(op_type).output_arg
            varies = any(arg.number_attr or arg.type_list_attr for arg in args)
            self._fixed_output_counts[op_type] = None if varies else len(args)
        return self._fixed_output_counts[op_type]

    def output_count(self, node):
        """How many outputs the node has."""
        count = self.fixed_output_count(node.op)
        return len(self.outputs(node)) if count is None else count

    def outputs(self, node):
        """The node's outputs, in TensorFlow's flat order."""
        op_def = self.op_def(node.op)
        outputs = []
        for name, fixed_type, type_attr, number_attr, type_list_attr in self._output_args(node.op):
            if number_attr:
                dtype = fixed_type or _attr(node, op_def, type_attr).type
                count = _attr(node, op_def, number_attr).i
                _check_count(node, number_attr, count, len(outputs))
                outputs.extend(Output(name, i, dtype) for i in range(count))
            elif type_list_attr:
                dtypes = _attr(node, op_def, type_list_attr).list.type
                _check_count(node, type_list_attr, len(dtypes), len(outputs))
                outputs.extend(Output(name, i, dtype) for i, dtype in enumerate(dtypes))
            else:
                outputs.append(Output(name, 0, fixed_type or _attr(node, op_def, type_attr).type))
        return outputs

    def _output_args(self, op_type):
        """The fields of the op's output args that `outputs` reads, read once per op type
        (reading protobuf fields costs far more than reading a tuple). A function's are
        read anew each time: the rewrite adds outputs to functions."""
        if op_type in self._functions:
            return _output_arg_fields(self._functions[op_type].signature)
        fields = self._output_arg_fields.get(op_type)
        if fields is None:
            fields = self._output_arg_fields[op_type] = _output_arg_fields(self.op_def(op_type))
        return fields


def _check_count(node, attr_name, count, before):
    """Refuses an output count (from attr `attr_name`) no model can hold: negative, or
    more than MAX_OUTPUTS outputs with the `before` the node already has."""
    if count < 0 or before + count > MAX_OUTPUTS:
        raise errors.CorruptModel(
            f"node '{node.name}' ({node.op}) claims {count} outputs in attr '{attr_name}'; "
            f"a node can have 0 to {MAX_OUTPUTS}")


def _output_arg_fields(op_def):
    return [(arg.name, arg.type, arg.type_attr, arg.number_attr, arg.type_list_attr)
            for arg in op_def.output_arg]


def _attr(node, op_def, name):
    """A node's attr, or the OpDef's default when the saver stripped it."""
    if name in node.attr:
        return node.attr[name]
    for attr in op_def.attr:
        if attr.name == name and attr.HasField("default_value"):
            return attr.default_value
    raise errors.CorruptModel(f"node '{node.name}' ({node.op}) lacks attr '{name}'")


class UndefinedOp(errors.UnknownOp):
    """An op that neither the model nor TensorFlow's registry, read, defines (an op of a
    custom library): an UnknownOp about one op, not about the registry."""


def _registered_op_def(op_type):
    registered, problem = _registered_op_defs()
    if op_type not in registered:
        where = f"({problem})" if problem else "in TensorFlow"
        error = errors.UnknownOp if problem else UndefinedOp
        raise error(f"op '{op_type}' is defined neither in the model nor {where}")
    return registered[op_type]


# Prints TensorFlow's whole op registry, serialized as an OpList, to stdout.
_DUMP_OP_LIST = """
import sys
from tensorflow.python.client import pywrap_tf_session as c_api
sys.stdout.buffer.write(c_api.TF_GetBuffer(c_api.TF_GetAllOpList()))
"""
REGISTRY_TIMEOUT = 300  # seconds; importing TensorFlow takes seconds, on a busy machine more


@functools.cache
def _registered_op_defs():
    """({op name: OpDef} of every op TensorFlow registers, why they could not be read or
    None).

    Importing TensorFlow costs seconds, so a child process reads the registry once per
    TensorFlow install and the result is cached on disk; this process never imports it.
    """
    cache = _cache_path()
    try:
        with open(cache, "rb") as f:
            data = f.read()
    except OSError:
        logging.debug("graphtap: reading TensorFlow's op registry into %s", cache)
        data, problem = _read_registry()
        if problem:
            return {}, problem
        _write_cache(cache, data)
    return {op_def.name: op_def for op_def in protos.OpList.FromString(data).op}, None


def _read_registry():
    """(the serialized OpList, None) from a child process, or (None, why it failed).

    The child is isolated (-I: no current directory, PYTHONPATH or user site on its path)
    and runs in an empty directory: a `tensorflow/` package wherever graphtap was started
    must not run. A child that hangs is killed after REGISTRY_TIMEOUT seconds.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryDirectory(prefix="graphtap-registry-") as empty:
        try:
            child = subprocess.run([sys.executable, "-I", "-c", _DUMP_OP_LIST], cwd=empty,
                                   capture_output=True, env=env, timeout=REGISTRY_TIMEOUT)
        except subprocess.TimeoutExpired:  # run() has killed the child
            return None, (f"TensorFlow's op registry could not be read: no answer in "
                          f"{REGISTRY_TIMEOUT} s")
    if child.returncode != 0:
        return None, "TensorFlow's op registry could not be read"
    return child.stdout, None


def _cache_path():
    """A cache file named after the installed TensorFlow (its path and build)."""
    spec = importlib.util.find_spec("tensorflow")
    origin = spec.origin if spec and spec.origin else "none"
    stat = os.stat(origin) if os.path.exists(origin) else None
    identity = f"{os.path.realpath(origin)}:{stat and stat.st_size}:{stat and stat.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = os.environ.get("GRAPHTAP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "graphtap")
    return os.path.join(root, f"tensorflow-op-list-{digest}.pb")


def _write_cache(path, data):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(staging, path)
    except OSError as error:  # no cache, then: the next run asks TensorFlow again
        logging.debug("graphtap: cannot cache the op registry: %s", error)

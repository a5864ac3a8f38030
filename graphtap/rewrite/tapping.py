"""The public operations: list what can be tapped, and tap it."""

import contextlib
import dataclasses
import gc

from graphtap import errors
from graphtap.rewrite import aliases, check, control_flow, manifest, model_io, protos, wire
from graphtap.rewrite.fusion import fusion_warnings
from graphtap.rewrite.index import GraphIndex, node_of, shape_dims
from graphtap.rewrite.keys import assign_keys
from graphtap.rewrite.layers import LayerMap
from graphtap.options import TapOptions
from graphtap.rewrite.plumbing import SignatureObjects, Tap, TapRewrite, add_signature
from graphtap.rewrite.selectors import Prefilter, SelectionContext, select, selectors_from
from graphtap.rewrite.signatures import choose_signatures, meta_graph_position, runnable_signatures
from graphtap.rewrite.traces import match_trace, trace_files

MANIFEST = manifest.PATH


@dataclasses.dataclass(frozen=True)
class TapRecord:
    """One tap as written to the manifest: where it comes from and how to fetch it."""

    signature: str  # None for a GraphDef
    source_signature: str  # the signature whose outputs `signature` has (differs in add mode)
    key: str  # output key in the signature (for a GraphDef, the Identity's name)
    function: str  # function holding the Identity (None: the outer graph)
    node: str  # the tapped node, and which of its outputs
    output: int
    op: str
    dtype: str
    shape: list  # dims, -1 where unknown; None when even the rank is unknown
    tensor: str  # what the signature output names in the graph
    call_path: list  # call nodes from the outer graph down to `function`
    loop: str = None  # inside a While body: "stack" (every iteration) or "last"
    # tapped because the signature runs the same function as this one (the default)
    same_function_as: str = None


@dataclasses.dataclass(frozen=True)
class Report:
    """What `tap` did."""

    input: str
    output: str
    taps: tuple  # TapRecord
    already_tapped: tuple  # names of selected tensors that earlier taps already expose
    warnings: tuple = ()  # taps that cost speed (they stop a Grappler fusion)
    # (signature, layer, output key): selected layers whose output already is an output
    already_outputs: tuple = ()
    # {signature: default signature} tapped too, because they run the same function
    same_function: dict = dataclasses.field(default_factory=dict)
    same_function_taps: tuple = ()  # TapRecord of those signatures (the manifest has all)

    @property
    def output_names(self):
        """For a GraphDef output: the node names to fetch (a converter's output_arrays)."""
        return [record.tensor.rsplit(":", 1)[0] for record in self.taps]


def tap(input_path, output_path, options=None, **changes):
    """Writes a copy of a SavedModel (or frozen GraphDef) with the selected tensors as
    extra outputs, and returns a Report.

    options: a TapOptions (see there for every option); `changes` are options given by
      name, on their own or over `options`: `tap(src, dst, ops=["Relu"])`.

    Errors are graphtap.errors.GraphtapError subclasses naming the file at fault.
    """
    options = TapOptions.of(options, **changes)
    with errors_about(input_path), _collector_paused():
        return _tap(input_path, output_path, options)


def _tap(input_path, output_path, options):
    """One pipeline for both inputs: a GraphDef is one unnamed signature (_GraphDefInput)."""
    model = model_io.read(input_path, stubs=True)
    model_io.check_output([input_path], output_path, options.overwrite,
                          is_directory=model.is_saved_model)
    if not model.is_saved_model and options.profile:
        raise errors.BadArgument("profiles map onto SavedModel signatures; this is a "
                                 "GraphDef", model.path)
    selectors = selectors_from(options)
    source = (_SavedModelInput if model.is_saved_model else _GraphDefInput)(model, options)
    index = source.index

    # Layer outputs and profiled nodes are found among all tensors: no prefilter then.
    keep = Prefilter.of(selectors)
    taps, already, already_outputs = [], [], []
    for key in source.keys:
        signature_def = source.signature_def(key)
        context = SelectionContext(index, key, signature_def, source.variable_names,
                                   already_outputs)
        try:
            candidates = source.candidates(key, keep)
            source.allow_control_flow_taps(candidates)
            selected = select(candidates, selectors, options.exclude, context)
        except errors.NoMatch:  # say so with every tensor's name at hand, for the hints
            if keep is not None:
                select(source.candidates(key), selectors, options.exclude, context)
            raise
        fresh = _fresh(selected, already)
        for candidate, tap_key in assign_keys(fresh, signature_def.outputs):
            taps.append(Tap(key, tap_key, candidate))
    if not taps:
        what = "already tapped" + (" or an output of the signature" if already_outputs else "")
        raise errors.NothingToTap(f"every selected tensor is {what}", model.path)
    same_function = source.same_function
    warnings = fusion_warnings(index, [t for t in taps if t.signature not in same_function])
    rewritten = source.rewrite(taps)
    source.check_output(rewritten)
    records = [_record(t, source.sources[t.signature],
                       same_function.get(source.sources[t.signature]))
               for t in rewritten.taps]
    source.write(output_path, records, rewritten)
    asked = tuple(r for r in records if r.same_function_as is None)
    return Report(input_path, output_path, asked, tuple(sorted(set(already))),
                  tuple(warnings), tuple(already_outputs), same_function,
                  tuple(r for r in records if r.same_function_as is not None))


class _SavedModelInput:
    """A SavedModel as the pipeline reads it: the meta graph of the tag set, its index,
    the signatures to tap (in mode "add", the new ones, made here), and how to rewrite,
    check and write it."""

    def __init__(self, model, options):
        self.model, self.options = model, options
        position = _meta_graph_position(model, options.tag_set)
        self.meta_graph = meta_graph = model.proto.meta_graphs[position]
        self.layout = model.layout or (model.data and wire.layout(model.data, position,
                                                                  len(model.proto.meta_graphs)))
        self.objects = objects = _objects(meta_graph)
        keys = _signature_keys(meta_graph, options.signatures, model.path)
        self.index = index = _index(meta_graph, self.layout)
        # {signature: default signature} tapped too, because they run the same function
        self.same_function = {}
        if options.signatures is None and options.mode == "extend":  # add: one new signature
            self.same_function = aliases.same_function(index, meta_graph.signature_def,
                                                       keys[0], _signatures(meta_graph))
            keys += sorted(self.same_function)
        check.check_input(meta_graph, objects, keys, model.path, index)
        self.sources = {key: key for key in keys}  # tapped signature -> whose outputs it has
        if options.mode == "add":
            tapped_signature = options.tapped_signature
            if tapped_signature and len(keys) > 1:
                raise errors.BadArgument("tapped_signature names one signature; several were "
                                         "given")
            keys = [tapped_signature or f"{key}_tapped" for key in self.sources]
            self.sources = dict(zip(keys, self.sources))
            for key, source in self.sources.items():
                if key not in meta_graph.signature_def:  # else: re-tapping extends it
                    add_signature(meta_graph.graph_def, meta_graph.signature_def, objects,
                                  source, key)
                    index.forget(None)  # the outer graph has a node more
        self.keys = keys
        self.variable_names = _variable_names(meta_graph) if options.layers else ()

    def signature_def(self, key):
        return self.meta_graph.signature_def[key]

    def candidates(self, key, keep=None):
        return _candidates(self.index, self.meta_graph, self.objects, key, keep)

    def allow_control_flow_taps(self, candidates):
        control_flow.allow_control_flow_taps(self.index, candidates, self.options.loop)

    def rewrite(self, taps):
        return TapRewrite(self.index, self.meta_graph.signature_def, self.objects,
                          self.options.loop).apply(taps)

    def check_output(self, rewritten):
        check.check_output(self.meta_graph, self.objects, self.keys, self.index,
                           rewritten.origins, set(self.index.functions) - rewritten.edited_in_place)

    def write(self, output_path, records, rewritten):
        model = self.model
        model_io.write_saved_model(model.proto, model.path, output_path,
                                   {MANIFEST: _manifest(model.path, records)},
                                   self.options.overwrite, self.layout, rewritten.edits,
                                   self.options.link_variables)


class _GraphDefInput:
    """A frozen GraphDef as the pipeline reads it: one unnamed signature (key None) over
    every tensor, with no outputs of its own; the taps become its outputs, and the output
    check reads them as such. Taps inside control flow stay refused, as before."""

    keys = (None,)
    sources = {None: None}
    variable_names = ()

    def __init__(self, model, options):
        self.model, self.options = model, options
        self.layout = model.data and wire.graph_def_layout(model.data)
        self.index = GraphIndex(model.proto, (), self.layout)
        self.same_function = {}
        self._signature_def = protos.SignatureDef()

    def signature_def(self, key):
        return self._signature_def

    def candidates(self, key, keep=None):
        return self.index.all_candidates(keep)

    def allow_control_flow_taps(self, candidates):
        pass  # a GraphDef's taps inside loops and branches stay refused

    def rewrite(self, taps):
        return TapRewrite(self.index).apply(taps)

    def check_output(self, rewritten):
        tapped = protos.SignatureDef()
        for tap in rewritten.taps:
            tapped.outputs[tap.key].name = tap.tensor
            tapped.outputs[tap.key].dtype = tap.candidate.dtype
        graph = check.SignatureGraph(self.model.proto, {None: tapped})
        check.check_output(graph, None, self.keys, self.index, rewritten.origins,
                           set(self.index.functions) - rewritten.edited_in_place)

    def write(self, output_path, records, rewritten):
        model_io.write_graph_def(self.model.proto, self.model.path, output_path,
                                 self.options.overwrite, self.layout, rewritten.edits)


def _signatures(meta_graph):
    return runnable_signatures(meta_graph.signature_def)


def list_targets(input_path, signatures=None, tag_set="serve"):
    """Every tensor that can be tapped: [index.Candidate], in graph order."""
    with errors_about(input_path):
        return _list_targets(input_path, signatures, tag_set)


def profile_times(input_path, logdir, signature=None, tag_set="serve"):
    """A traces.ProfileMatch: the time each node of a signature took in the trace
    under `logdir`, most first, and the op events that map to no node. No TensorFlow."""
    with errors_about(input_path):
        model = model_io.read(input_path)
        if not model.is_saved_model:
            raise errors.BadArgument("profiles map onto SavedModel signatures", model.path)
        meta_graph = _meta_graph(model, tag_set)
        (key,) = _signature_keys(meta_graph, signature, model.path)
        candidates = _candidates(_index(meta_graph), meta_graph, _objects(meta_graph), key)
        return match_trace(candidates, trace_files(logdir))


def _list_targets(input_path, signatures, tag_set):
    model = model_io.read(input_path, stubs=True)
    if not model.is_saved_model:
        index = GraphIndex(model.proto)
        candidates = index.all_candidates()
        return _with_layers(candidates, LayerMap(index, candidates))
    meta_graph = _meta_graph(model, tag_set)
    index, objects = _index(meta_graph, model.layout), _objects(meta_graph)
    found = []
    for key in _signature_keys(meta_graph, signatures, model.path):
        found += _candidates(index, meta_graph, objects, key)
    control_flow.allow_control_flow_taps(index, found, None)  # what taps without --loop
    return _with_layers(found, LayerMap(index, found, _variable_names(meta_graph)))


def _with_layers(candidates, layer_map):
    for candidate in candidates:
        candidate.layer = layer_map.layer_of(candidate)
        candidate.layer_output = layer_map.is_output(candidate)
    return candidates


def _variable_names(meta_graph):
    """Names of the model's variables (`dense/kernel`), from its object graph."""
    return [node.variable.name for node in meta_graph.object_graph_def.nodes
            if node.WhichOneof("kind") == "variable"]


def _objects(meta_graph):
    if meta_graph.HasField("object_graph_def"):
        return SignatureObjects(meta_graph.object_graph_def)
    return None


def _index(meta_graph, layout=None):
    """The GraphIndex of a meta graph; with its wire.Layout, one that reads less."""
    return GraphIndex(meta_graph.graph_def, meta_graph.meta_info_def.stripped_op_list.op,
                      layout)


def _fresh(selected, already):
    """The selected (candidate, key) pairs not tapped yet; adds the others' names to `already`."""
    already.extend(c.name for c, _ in selected if c.tapped_by)
    return [(c, k) for c, k in selected if not c.tapped_by]


def _candidates(index, meta_graph, objects, key, keep=None):
    roots = [node_of(info.name) for info in meta_graph.signature_def[key].outputs.values()]
    is_tf2 = objects is not None and objects.node_id(key) is not None
    return index.candidates_from(roots, outer_tensors=not is_tf2, keep=keep)


@contextlib.contextmanager
def _collector_paused():
    """Pauses Python's cyclic garbage collector, if it runs. A rewrite makes no reference
    cycles but holds an object per node, which every full collection would walk again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def errors_about(input_path):
    """Names the input in errors that do not name a file of their own."""
    try:
        yield
    except errors.GraphtapError as error:
        if error.where is None:
            raise type(error)(error.what, input_path) from None
        raise


def _meta_graph(model, tag_set):
    return model.proto.meta_graphs[_meta_graph_position(model, tag_set)]


def _meta_graph_position(model, tag_set):
    return meta_graph_position(model.proto, tag_set, model.path)


def _signature_keys(meta_graph, signatures, path):
    return choose_signatures(meta_graph.signature_def, signatures, path)


def _record(tap, source_signature, same_function_as=None):
    c = tap.candidate
    return TapRecord(
        signature=tap.signature,
        source_signature=source_signature,
        key=tap.key,
        function=tap.function,
        node=c.node,
        output=c.output,
        op=c.op,
        dtype=protos.dtype_name(c.dtype),
        shape=shape_dims(tap.shape),
        tensor=tap.tensor,
        call_path=[call.node for call in c.calls],
        loop=c.loop,
        same_function_as=same_function_as,
    )


def _manifest(model_dir, records):
    """The manifest's bytes: the input's taps (from an earlier run) followed by these."""
    # A record's __dict__ holds its fields in order: no copy field by field.
    return manifest.encode((manifest.read(model_dir) or []) + [vars(r) for r in records])

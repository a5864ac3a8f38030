"""The compiler pass, on protobufs alone: read -> index -> select -> rewrite -> check ->
write. Nothing here imports TensorFlow, numpy or Keras (tests/test_layout.py reads the
imports), so `graphtap tap` and `graphtap list` never start TensorFlow.

    protos        message classes from the installed TensorFlow's descriptors, no runtime
    model_io      reading a SavedModel or GraphDef; writing the output (with staging)
    wire          just enough of the wire format to copy what the pass left alone
    staging       outputs that appear whole or not at all (locks, atomic exchange, fsync)
    source_files  reading and copying the input's files without following links out
    paths         where outputs may go: never into, onto or around an input
    manifest      assets.extra/graphtap.json: one reader, one writer
    signatures    meta graph, tag set and default signature: one policy
    index         bodies, call sites, tensor references, candidates
    opdefs        op definitions: the model's own first, TensorFlow's registry last
    aliases       what a signature output really holds; signatures of one function
    selectors     one interface: names (RE2), op types, Keras layers, profiles; union, exclusions
    layers        Keras layers found from name scopes
    traces        profiler traces mapped onto the signature's nodes
    keys          output key policy
    op_kinds      the ops that run functions, one class each (call, While, If, Case)
    plumbing      the pass: Identity taps, plumbed out through every call, clone-on-write
    control_flow  taps inside While loops and If/Case branches
    nodes         the nodes the pass adds
    fusion        warnings for taps that stop a Grappler fusion
    check         consistency checks of the input and the output
    tapping       tap(), list_targets(), profile_times(): the pipeline
"""

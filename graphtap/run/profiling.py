"""Running a signature under TensorFlow's profiler (`graphtap profile`), and reading the
trace back onto the signature's tensors (graphtap.traces). Imports TensorFlow.
"""

from graphtap import errors
from graphtap.rewrite import paths, tapping
from graphtap.run import runtime
from graphtap.run.dumping import Runner


def profile(input_path, logdir, inputs=None, signature=None, runs=10, batch_size=1,
            custom_ops=(), tag_set="serve"):
    """Runs a signature `runs` times under TensorFlow's profiler, writing the standard
    trace (`logdir/plugins/profile/<run>/<host>.xplane.pb`), and returns its
    traces.ProfileMatch. inputs: {name: array}; others are random, `batch_size`
    examples. custom_ops: modules to import and `.so` files to load first, for the model's
    custom ops. tag_set: tags of the meta graph to run and map the trace onto,
    comma-separated."""
    with tapping.errors_about(input_path):
        paths.check_not_inside(input_path, logdir)
        key = run_profile(input_path, logdir, inputs, signature, runs, batch_size,
                          custom_ops=custom_ops, tag_set=tag_set)
    return tapping.profile_times(input_path, logdir, key, tag_set)


def run_profile(model_dir, logdir, inputs=None, signature=None, runs=10, batch_size=1, seed=0,
                custom_ops=(), tag_set="serve"):
    """Runs a signature `runs` times under the profiler (after one warm-up call) and
    writes the trace to `logdir`. inputs: {name: array}; the others are random, of the
    signature's dtypes and shapes, `batch_size` examples (unknown dimensions: 1).
    custom_ops: modules and `.so` files defining the model's custom ops, loaded first.
    tag_set: tags of the meta graph to run, comma-separated. Imports TensorFlow;
    inter-op parallelism is 1, so that no two ops' times overlap."""
    import numpy as np
    import tensorflow as tf

    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # the runtime already started in this process
        pass
    runner = Runner(model_dir, signature, tag_set, custom_ops)
    inputs = inputs or {}
    specs = {name: (spec.dtype, [None, *spec.shape.as_list()[1:]])
             for name, spec in runner.specs.items() if name not in inputs}
    feed = runtime.random_inputs(specs, batch_size, np.random.default_rng(seed), model_dir)
    feed.update({name: runner.conform(name, inputs[name]) for name in runner.specs
                 if name in inputs})
    unknown = sorted(set(inputs or ()) - set(runner.specs))
    if unknown:
        raise errors.GraphtapError(f"signature '{runner.signature_key}' has no input(s) "
                                   f"{', '.join(unknown)}", model_dir)
    tensors = {name: tf.constant(value) for name, value in feed.items()}
    runner.function(**tensors)  # warm-up: tracing and first-run allocation stay out of the trace
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(runs):
            runner.function(**tensors)
    finally:
        tf.profiler.experimental.stop()
    return runner.signature_key

"""Running a SavedModel signature the two ways TensorFlow loads one."""

import numpy as np
import tensorflow as tf


def run_tf2(model_dir, signature, inputs):
    """tf.saved_model.load(...).signatures[signature](**inputs) as numpy arrays."""
    loaded = tf.saved_model.load(model_dir)
    outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {key: value.numpy() for key, value in outputs.items()}


def write_examples(path, images, feature="pixels"):
    """A TFRecord file at `path` of one tf.Example per image: its values, flattened, as
    the float list `feature`."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image in images:
            values = tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(image)))
            example = tf.train.Example(features=tf.train.Features(feature={feature: values}))
            writer.write(example.SerializeToString())


def run_tf1(model_dir, signature, inputs, fetch_tensors=(), tags=("serve",)):
    """The TF Serving path: a Session over the SavedModel, fetching SignatureDef tensor
    names. `fetch_tensors` are extra graph tensors to fetch (the original's internals)."""
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.load(session, list(tags), model_dir)
        signature_def = meta_graph.signature_def[signature]
        feed = {signature_def.inputs[k].name: v for k, v in inputs.items()}
        keys = sorted(signature_def.outputs)
        names = [signature_def.outputs[k].name for k in keys] + list(fetch_tensors)
        values = session.run(names, feed)
    result = dict(zip(keys, values))
    result.update(zip(fetch_tensors, values[len(keys):]))
    return result


def assert_bit_identical(actual, expected, keys):
    for key in keys:
        assert actual[key].dtype == expected[key].dtype, key
        assert actual[key].shape == expected[key].shape, key
        assert actual[key].tobytes() == expected[key].tobytes(), f"{key} differs"


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def submodel_outputs(model, layer_names, inputs):
    """{layer name: its output on `inputs`}, from a Keras sub-model of `model`."""
    import keras

    outputs = [model.get_layer(name).output for name in layer_names]
    values = keras.Model(model.inputs, outputs)([inputs], training=False)
    if len(layer_names) == 1:
        values = [values]
    return dict(zip(layer_names, [np.asarray(v) for v in values]))

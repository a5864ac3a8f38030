"""Builds the small models graphtap is tested and demonstrated on.

Every builder takes the directory to write and returns what a test needs to
compute independent references (the Keras model, the tf.Module, or the names of
the TF1 tensors). Seeds are fixed, so values are reproducible; the protobufs
are not byte-stable across runs (TensorFlow numbers its functions), so nothing
should compare them across builds.

    python tools/make_testdata.py [--out=testdata] [--only=keras_cnn,...]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SEED = 1234


def _seed():
    tf.random.set_seed(SEED)
    np.random.seed(SEED)
    import keras

    keras.utils.set_random_seed(SEED)


def keras_cnn(export_dir):
    """Keras 3 functional CNN with BatchNorm and a residual add, exported with `model.export`."""
    _seed()
    model = cnn_architecture()
    # Non-trivial BatchNorm statistics, so that the moving averages matter.
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    model.export(export_dir, verbose=False)
    return model


def cnn_architecture():
    """keras_cnn's architecture, every layer named, with fresh weights."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    y = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_res")(x)
    x = layers.Add(name="add")([x, y])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(16, activation="relu", name="dense")(x)
    outputs = layers.Dense(4, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="cnn")


def keras_lstm(export_dir):
    """Keras 3 LSTM (a While loop in the exported graph) followed by a Dense layer."""
    import keras
    from keras import layers

    _seed()
    inputs = keras.Input(shape=(5, 3), name="sequence")
    x = layers.LSTM(4, name="lstm")(inputs)
    outputs = layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs, name="rnn")
    model.export(export_dir, verbose=False)
    return model


def _keras_rnn(export_dir, layer, return_sequences):
    import keras
    from keras import layers

    _seed()
    inputs = keras.Input(shape=(5, 3), name="sequence")
    x = getattr(layers, layer)(4, return_sequences=return_sequences, name=layer.lower())(inputs)
    outputs = layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs, name="rnn")
    model.export(export_dir, verbose=False)
    return model


def keras_lstm_sequences(export_dir):
    """Keras 3 LSTM returning every step's output (return_sequences=True)."""
    return _keras_rnn(export_dir, "LSTM", return_sequences=True)


def keras_gru(export_dir):
    """Keras 3 GRU returning its last output."""
    return _keras_rnn(export_dir, "GRU", return_sequences=False)


def keras_gru_sequences(export_dir):
    """Keras 3 GRU returning every step's output."""
    return _keras_rnn(export_dir, "GRU", return_sequences=True)


class WhileModule(tf.Module):
    """tf.while_loop in a tf.function: four halvings with a shift, then a loop in a loop."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def __call__(self, x):
        def body(i, value):
            return i + 1, tf.nn.relu(value * 0.5 + tf.cast(i, tf.float32) - 1.0, name="step")

        _, out = tf.while_loop(lambda i, value: i < 4, body, [tf.constant(0), x])
        return {"y": out}

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def nested(self, x):
        def inner(j, value):
            return j + 1, tf.math.sin(value, name="wave")

        def outer(i, value):
            _, value = tf.while_loop(lambda j, v: j < 2, inner, [tf.constant(0), value])
            return i + 1, value

        _, out = tf.while_loop(lambda i, value: i < 3, outer, [tf.constant(0), x])
        return {"y": out}


class Branchy(tf.Module):
    """A tf.cond (StatelessIf) and a tf.switch_case (StatelessCase)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def __call__(self, x, k):
        chosen = tf.cond(tf.reduce_sum(x) > 0, lambda: x * 2.0, lambda: x - 1.0, name="cond")
        cased = tf.switch_case(k, [lambda: x + 1.0, lambda: x * x, lambda: -x], name="case")
        return {"output_0": chosen + cased}


def branchy(export_dir):
    """tf.Module with a tf.cond and a tf.switch_case, saved with tf.saved_model.save."""
    module = Branchy()
    tf.saved_model.save(module, export_dir)
    return module


def while_module(export_dir):
    """tf.Module saved with tf.saved_model.save: a While loop, and (signature `nested`) a
    While loop inside a While loop's body."""
    module = WhileModule()
    tf.saved_model.save(module, export_dir,
                        signatures={"serving_default": module.__call__, "nested": module.nested})
    return module


def mobilenet_v2(export_dir):
    """keras.applications.MobileNetV2 (weights=None) at a small input size."""
    import keras

    _seed()
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
    )
    model.export(export_dir, verbose=False)
    return model


class NestedModule(tf.Module):
    """Three levels of nested tf.functions; `inner` is called from two places."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(SEED)
        self.w1 = tf.Variable(rng.standard_normal((4, 6)).astype("float32"), name="w1")
        self.w2 = tf.Variable(rng.standard_normal((6, 3)).astype("float32"), name="w2")

    @tf.function
    def inner(self, x):
        return tf.nn.relu(tf.matmul(x, self.w1), name="act")

    @tf.function
    def middle(self, x):
        first = self.inner(x)
        second = self.inner(x * 2.0)
        return tf.add(first, second, name="mix")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def __call__(self, x):
        hidden = self.middle(x)
        logits = tf.matmul(hidden, self.w2, name="logits")
        return {"output_0": tf.nn.softmax(logits, name="probs"), "logits": logits}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def hidden(self, x):
        return {"hidden": self.middle(x)}


def nested_module(export_dir):
    """tf.Module saved with tf.saved_model.save, two signatures sharing functions."""
    module = NestedModule()
    tf.saved_model.save(
        module,
        export_dir,
        signatures={"serving_default": module.__call__, "hidden": module.hidden},
    )
    return module


def _tf1_graph():
    """The TF1 MLP graph shared by the Builder model and the frozen GraphDef."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(SEED)
        rng = np.random.default_rng(SEED)
        x = tf.compat.v1.placeholder(tf.float32, [None, 5], name="x")
        w1 = tf.compat.v1.Variable(rng.standard_normal((5, 7)).astype("float32"), name="w1")
        b1 = tf.compat.v1.Variable(rng.standard_normal(7).astype("float32"), name="b1")
        w2 = tf.compat.v1.Variable(rng.standard_normal((7, 3)).astype("float32"), name="w2")
        hidden = tf.nn.relu(tf.nn.bias_add(tf.matmul(x, w1), b1), name="hidden/Relu")
        logits = tf.matmul(hidden, w2, name="logits")
        top_values, top_indices = tf.math.top_k(logits, k=2, name="top")
        tf.nn.softmax(logits, name="probs")
    return graph, {"x": "x:0", "probs": "probs:0", "top_indices": top_indices.name}


def tf1_builder(export_dir):
    """TF1 SavedModel from SavedModelBuilder, with a `serve` and a `train` meta graph."""
    graph, names = _tf1_graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        signature = tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
            inputs={"x": info(graph.get_tensor_by_name(names["x"]))},
            outputs={
                "probs": info(graph.get_tensor_by_name(names["probs"])),
                "top_indices": info(graph.get_tensor_by_name(names["top_indices"])),
            },
            method_name="tensorflow/serving/predict",
        )
        builder = tf.compat.v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(
            sess, ["serve"], signature_def_map={"serving_default": signature}
        )
        builder.add_meta_graph(["train"], signature_def_map={"train_probs": signature})
        builder.save()
    return names


def frozen_graph(path):
    """Frozen GraphDef (`.pb`, plus the same graph as `.pbtxt` beside it)."""
    graph, names = _tf1_graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), ["probs", "top"]
        )
    with open(path, "wb") as f:
        f.write(frozen.SerializeToString())
    tf.io.write_graph(frozen, os.path.dirname(path), os.path.basename(path) + "txt", as_text=True)
    return names


BUILDERS = {
    "keras_cnn": (keras_cnn, "keras_cnn"),
    "nested_module": (nested_module, "nested_module"),
    "tf1_builder": (tf1_builder, "tf1_builder"),
    "frozen_graph": (frozen_graph, "frozen_graph.pb"),
    "keras_lstm": (keras_lstm, "keras_lstm"),
    "mobilenet_v2": (mobilenet_v2, "mobilenet_v2"),
    "keras_lstm_sequences": (keras_lstm_sequences, "keras_lstm_sequences"),
    "keras_gru": (keras_gru, "keras_gru"),
    "keras_gru_sequences": (keras_gru_sequences, "keras_gru_sequences"),
    "while_module": (while_module, "while_module"),
    "branchy": (branchy, "branchy"),
}


def build(out_dir, only=None):
    """Writes every model named in `only` (default: all) below `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, (builder, filename) in BUILDERS.items():
        if only and name not in only:
            continue
        path = os.path.join(out_dir, filename)
        builder(path)
        paths[name] = path
    return paths


def main(argv):
    from absl import app, flags

    flags.DEFINE_string("out", "testdata", "Directory to write the models to.")
    flags.DEFINE_list("only", [], f"Models to build (default all): {', '.join(BUILDERS)}.")

    def run(_):
        for name, path in build(flags.FLAGS.out, flags.FLAGS.only).items():
            print(f"{name}: {path}")

    app.run(run, argv)


if __name__ == "__main__":
    main(sys.argv)

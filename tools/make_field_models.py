"""Builds the "models from the field" in testdata/field/: exports made by packages that CI
does not install (tf_keras, keras-hub, tensorflow_text), each with its reference values.

Run it once, in a virtual environment that has them (tf_keras pulls the full `tensorflow`
wheel, which must not sit beside tensorflow-cpu):

    python -m venv /tmp/venv-gen
    /tmp/venv-gen/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 keras-hub==0.32.0
    /tmp/venv-gen/bin/pip install --no-deps tensorflow-text==2.21.1
    /tmp/venv-gen/bin/python tools/make_field_models.py [--out=testdata/field] [--only=NAME,...]

Weights are random (seeded); nothing is downloaded. Beside each model directory NAME,
`NAME.npz` holds the reference: `input/<name>` (the inputs), `output/<key>` (the
signature's outputs) and `tap/<name>` (the value of a layer or tensor, computed by Keras
itself: a tf_keras sub-model `Model(inputs, layer.output)`, or for layers nested inside a
keras-hub layer their output recorded during a call). The tests tap the checked-in models
and compare with these values.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SEED = 1234


def _array(value):
    value = np.asarray(value)
    return value.astype(bytes) if value.dtype == object else value  # tf.string: bytes


def _save_reference(path, inputs, outputs, taps, **extra):
    arrays = {f"input/{k}": _array(v) for k, v in inputs.items()}
    arrays.update({f"output/{k}": _array(v) for k, v in outputs.items()})
    arrays.update({f"tap/{k}": _array(v) for k, v in taps.items()})
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    np.savez(path + ".npz", **arrays)


def _serving_outputs(model_dir, inputs):
    loaded = tf.saved_model.load(model_dir)
    outputs = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


# --- tf_keras (Keras 2) ---------------------------------------------------------------------


def _tf_keras_functional():
    """A small ResNet-shaped functional model whose output layer is named `predictions`,
    as in tf_keras.applications.ResNet50 (whose serving output is keyed `predictions`)."""
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    layers = tf_keras.layers
    inputs = tf_keras.Input(shape=(8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="conv1_conv")(inputs)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    y = layers.Conv2D(4, 3, padding="same", name="conv2_conv")(x)
    x = layers.Add(name="conv2_add")([x, y])
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(5, activation="softmax", name="predictions")(x)
    model = tf_keras.Model(inputs, outputs, name="resnet_like")
    bn = model.get_layer("conv1_bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 4).astype("float32"))
    images = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype("float32")
    return model, {"image": images}


def _tf_keras_sequential():
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    layers = tf_keras.layers
    model = tf_keras.Sequential([
        tf_keras.Input(shape=(6,), name="features"),
        layers.Dense(8, activation="relu", name="hidden"),
        layers.Dropout(0.5, name="dropout"),
        layers.Dense(8, activation="tanh", name="hidden_2"),
        layers.Dense(3, name="logits"),
    ], name="sequential")
    features = np.random.default_rng(2).standard_normal((4, 6)).astype("float32")
    return model, {"features": features}


def _tf_keras_submodel_taps(model, inputs):
    import tf_keras

    names = [layer.name for layer in model.layers
             if not isinstance(layer, tf_keras.layers.InputLayer)]
    sub = tf_keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    values = sub(list(inputs.values()), training=False)
    return {n: np.asarray(v) for n, v in zip(names, values)}


def tf_keras_models(out):
    """Each tf_keras model saved both ways: model.save(save_format='tf') and
    tf.saved_model.save(model)."""
    for name, build in (("tfk_functional", _tf_keras_functional),
                        ("tfk_sequential", _tf_keras_sequential)):
        model, inputs = build()
        taps = _tf_keras_submodel_taps(model, inputs)
        for how in ("keras", "tf"):
            path = os.path.join(out, f"{name}_{how}")
            if how == "keras":
                model.save(path, save_format="tf", include_optimizer=False)
            else:
                tf.saved_model.save(model, path)
            outputs = _serving_outputs(path, inputs)
            _save_reference(path, inputs, outputs, taps)
            _prune(path)


def tf_keras_lookup(out):
    """tf_keras StringLookup whose vocabulary is a file (an asset of the SavedModel), after a
    string op (a string tensor to tap) and before an embedding."""
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    layers = tf_keras.layers
    vocab = os.path.join(out, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(["red", "green", "blue", "cyan"]) + "\n")
    words = tf_keras.Input(shape=(3,), dtype=tf.string, name="words")
    lower = layers.Lambda(tf.strings.lower, name="lower")(words)
    ids = layers.StringLookup(vocabulary=vocab, name="lookup")(lower)
    x = layers.Embedding(6, 4, name="embedding")(ids)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = layers.Dense(2, name="score")(x)
    model = tf_keras.Model(words, outputs, name="lookup_model")
    inputs = {"words": np.array([[b"Red", b"BLUE", b"plum"], [b"cyan", b"green", b"Red"]])}
    taps = _tf_keras_submodel_taps(model, inputs)
    path = os.path.join(out, "tfk_lookup")
    model.save(path, save_format="tf", include_optimizer=False)
    os.remove(vocab)
    outputs = _serving_outputs(path, inputs)
    _save_reference(path, inputs, outputs, taps)
    _prune(path)


# --- keras-hub (Keras 3) --------------------------------------------------------------------


class _Recorder:
    """Records the outputs of Keras layers nested inside other layers during one call."""

    def __init__(self, layers):
        self.values = {}
        self._layers = layers

    def __enter__(self):
        for name, layer in self._layers.items():
            original = layer.call

            def call(*args, _name=name, _original=original, **kwargs):
                result = _original(*args, **kwargs)
                self.values[_name] = np.asarray(result)
                return result

            layer.call = call
        return self

    def __exit__(self, *exc):
        for layer in self._layers.values():
            del layer.call


def _nested(backbone):
    """{'<transformer layer>/<path>': layer} of the sublayers whose outputs the tests tap:
    attention softmax, layer norms and the GELU feed-forward layer of every block."""
    found = {}
    for block in backbone.layers:
        if not block.name.startswith("transformer_layer"):
            continue
        attention = block._self_attention_layer
        found[f"{block.name}/softmax"] = attention._softmax
        found[f"{block.name}/self_attention_layer_norm"] = block._self_attention_layer_norm
        found[f"{block.name}/feedforward_layer_norm"] = block._feedforward_layer_norm
        found[f"{block.name}/feedforward_intermediate_dense"] = (
            block._feedforward_intermediate_dense)
    return found


def _keras_hub_model(out, name, backbone, inputs):
    import keras

    path = os.path.join(out, name)
    # Operations, not layers: model.summary() lists the GetItem operation `get_item` too.
    operations = [op for op in backbone.operations if op.__class__.__name__ != "InputLayer"]
    names = [op.name for op in operations]
    sub = keras.Model(backbone.inputs, [op.output for op in operations])
    taps = dict(zip(names, (np.asarray(v) for v in sub(inputs, training=False))))
    with _Recorder(_nested(backbone)) as recorder:
        backbone(inputs, training=False)
    taps.update(recorder.values)
    backbone.export(path, verbose=False)
    outputs = _serving_outputs(path, inputs)
    _save_reference(path, inputs, outputs, taps, layers=np.array(names))
    _prune(path)


def keras_hub_models(out):
    import keras
    import keras_hub

    keras.utils.set_random_seed(SEED)
    bert = keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=2, num_heads=2,
                                         hidden_dim=8, intermediate_dim=16,
                                         max_sequence_length=12, num_segments=2)
    rng = np.random.default_rng(3)
    inputs = {"token_ids": rng.integers(0, 30, (2, 12)).astype("int32"),
              "segment_ids": np.array([[0] * 6 + [1] * 6, [0] * 8 + [1] * 4], "int32"),
              "padding_mask": np.array([[1] * 12, [1] * 9 + [0] * 3], "int32")}
    _keras_hub_model(out, "hub_bert", bert, inputs)

    keras.utils.set_random_seed(SEED)
    gpt2 = keras_hub.models.GPT2Backbone(vocabulary_size=30, num_layers=2, num_heads=2,
                                         hidden_dim=8, intermediate_dim=16,
                                         max_sequence_length=12)
    inputs = {"token_ids": rng.integers(0, 30, (2, 12)).astype("int32"),
              "padding_mask": np.array([[1] * 12, [1] * 7 + [0] * 5], "int32")}
    _keras_hub_model(out, "hub_gpt2", gpt2, inputs)


# --- tensorflow_text ------------------------------------------------------------------------


def tensorflow_text_module(out):
    """A tf.Module whose tensorflow_text ops run only inside tf.cond branches and a
    tf.map_fn body, so the SavedModel's stripped_op_list does not list them."""
    import tensorflow_text as text

    class Tokens(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                      tf.TensorSpec([], tf.bool)])
        def __call__(self, sentences, split):
            lengths = tf.strings.length(sentences)
            scaled = tf.identity(tf.cast(lengths, tf.float32) * self.scale, name="scaled")

            def by_whitespace():
                return text.WhitespaceTokenizer().tokenize(sentences).row_lengths()

            def whole():
                return tf.ones_like(lengths, tf.int64)

            counts = tf.cond(split, by_whitespace, whole)
            normalized = tf.map_fn(lambda s: text.normalize_utf8(s, "NFKC"), sentences)
            return {"scaled": scaled, "counts": counts, "normalized": normalized}

    module = Tokens()
    path = os.path.join(out, "tf_text")
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    inputs = {"sentences": np.array([b"a b  c", "Ｆｕｌｌ width".encode()]),
              "split": np.array(True)}
    outputs = _serving_outputs(path, inputs)
    _save_reference(path, inputs, outputs, {"scaled": outputs["scaled"]})
    _prune(path)


def _prune(path):
    """Drops what loading does not need and would only grow testdata/."""
    fingerprint = os.path.join(path, "fingerprint.pb")
    if os.path.exists(fingerprint):
        os.remove(fingerprint)


BUILDERS = {"tf_keras": tf_keras_models, "tf_keras_lookup": tf_keras_lookup,
            "keras_hub": keras_hub_models, "tf_text": tensorflow_text_module}


def main(argv):
    out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "testdata", "field")
    only = list(BUILDERS)
    for arg in argv[1:]:
        if arg.startswith("--out="):
            out = arg.split("=", 1)[1]
        elif arg.startswith("--only="):
            only = arg.split("=", 1)[1].split(",")
        else:
            sys.exit(f"unknown argument {arg}")
    os.makedirs(out, exist_ok=True)
    for name in only:
        BUILDERS[name](out)
    versions = {"tensorflow": tf.__version__}
    for package in ("tf_keras", "keras", "keras_hub", "tensorflow_text"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            pass
    with open(os.path.join(out, "VERSIONS.json"), "w") as f:
        json.dump(versions, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv)

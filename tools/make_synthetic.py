"""Builds synthetic SavedModels of a chosen size, for measuring how the rewrite scales.

The model is a `tf.Module` saved with `tf.saved_model.save`: its signature calls a top
function, which calls `--fanout` middle functions, each calling `--fanout` leaf functions;
the leaves hold the nodes, in blocks shaped like a Keras dense layer with inference-mode
batch normalisation and a residual add, each block ending in one activation (Relu), so
about one node in 17 is an activation (ResNet50 has about one in 30). Every function is
its own FunctionDef; a leaf's two variables are shared by its blocks, so the checkpoint
stays small however many nodes there are.

    python tools/make_synthetic.py --nodes=10000 --out=/tmp/synthetic_10k
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

WIDTH = 4  # features per tensor: the size of the graph, not of the data, is what counts
NODES_PER_BLOCK = 17  # nodes one block adds to a leaf body


class _Leaf(tf.Module):
    def __init__(self, blocks, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.blocks = blocks
        self.kernel = tf.Variable(rng.normal(0, 0.5, (WIDTH, WIDTH)).astype("float32"))
        self.bias = tf.Variable(rng.normal(0, 0.1, WIDTH).astype("float32"))
        # Batch-norm statistics and scales as constants, as a frozen model has them.
        self.mean, self.beta = rng.normal(0, 0.1, (2, WIDTH)).astype("float32")
        self.variance, self.gamma = rng.uniform(0.5, 1.5, (2, WIDTH)).astype("float32")
        self.call = tf.function(self._call)

    def _call(self, x):
        for _ in range(self.blocks):
            y = tf.nn.bias_add(tf.matmul(x, self.kernel), self.bias)
            y = (y - self.mean) * tf.math.rsqrt(self.variance + 1e-3)
            y = y * self.gamma + self.beta
            x = tf.nn.relu(y) + x
        return x


class _Chain(tf.Module):
    """Calls its parts one after another, in a tf.function of its own."""

    def __init__(self, parts):
        super().__init__()
        self.parts = parts
        self.call = tf.function(self._call)

    def _call(self, x):
        for part in self.parts:
            x = part.call(x)
        return x


def build(export_dir, nodes, fanout=10, seed=0):
    """Writes a SavedModel of about `nodes` nodes; returns the number of activations
    (one per block). The saver writes each leaf's body twice (once as its own
    tf.function, once as called from its middle function), and both count."""
    leaves = fanout * fanout
    blocks = max(1, round(nodes / (2 * NODES_PER_BLOCK * leaves)))
    middles = [
        _Chain([_Leaf(blocks, seed + m * fanout + i) for i in range(fanout)])
        for m in range(fanout)
    ]
    model = _Chain(middles)
    spec = tf.TensorSpec([None, WIDTH], tf.float32, "x")
    signature = tf.function(lambda x: {"y": model.call(x)}, input_signature=[spec])
    tf.saved_model.save(model, export_dir, signatures={"serving_default": signature})
    return blocks * leaves


def main(argv):
    from absl import app, flags

    flags.DEFINE_integer("nodes", 10000, "About how many nodes the leaf functions hold.")
    flags.DEFINE_integer("fanout", 10, "Middle functions, and leaf functions per middle one.")
    flags.DEFINE_string("out", None, "Directory to write.", required=True)

    def run(_):
        count = build(flags.FLAGS.out, flags.FLAGS.nodes, flags.FLAGS.fanout)
        print(f"{flags.FLAGS.out}: {count} activations")

    app.run(run, argv)


if __name__ == "__main__":
    import sys

    main(sys.argv)

"""Peak memory of `graphtap dump --save=stats` as the data grows: 1,000 and then 10,000
examples through MobileNetV2 (weights=None, every Relu6 tapped), each in a fresh process
that reports its own peak RSS (VmHWM). Bounded memory means a ratio near 1.

    python tools/dump_memory.py [--size=64] [--workdir=/tmp/graphtap-dump-memory]

The input is --size pixels square (MobileNetV2 takes 32 and up) to keep 10,000 examples
quick on a CPU; the statistics are over all 35 taps and the output.
"""

import os
import subprocess
import sys

import numpy as np
from absl import app, flags

flags.DEFINE_integer("size", 64, "Image height and width.")
flags.DEFINE_list("examples", ["1000", "10000"], "Data set sizes to compare.")
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.DEFINE_string("workdir", "/tmp/graphtap-dump-memory", "Where models and data go.")
FLAGS = flags.FLAGS
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

DUMP = """
import sys, time, graphtap
start = time.perf_counter()
graphtap.dump(sys.argv[1], {sys.argv[5]: graphtap.NpyFile(sys.argv[2])}, sys.argv[3],
              batch_size=int(sys.argv[4]), overwrite=True, progress=False)
seconds = time.perf_counter() - start
peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(peak, seconds)
"""


def prepare():
    """The tapped model and one .npy per data set size, under --workdir."""
    model = os.path.join(FLAGS.workdir, "mobilenet_v2")
    tapped = model + "_tapped"
    if not os.path.exists(tapped):
        code = (f"import keras; keras.applications.MobileNetV2(input_shape=({FLAGS.size}, "
                f"{FLAGS.size}, 3), weights=None).export({model!r}, verbose=False)")
        subprocess.run([sys.executable, "-c", code], check=True, env=ENV)
        subprocess.run([sys.executable, "-m", "graphtap", "tap", f"--input={model}",
                        f"--output={tapped}", "--tap_op=Relu6"], check=True, env=ENV,
                       capture_output=True)
    data = {}
    rng = np.random.default_rng(0)
    for count in map(int, FLAGS.examples):
        path = os.path.join(FLAGS.workdir, f"images_{count}.npy")
        if not os.path.exists(path):
            images = np.lib.format.open_memmap(path, "w+", np.float32,
                                               (count, FLAGS.size, FLAGS.size, 3))
            for start in range(0, count, 1000):
                stop = min(start + 1000, count)
                images[start:stop] = rng.uniform(-1, 1, images[start:stop].shape)
            images.flush()
            del images
        data[count] = path
    return tapped, data


def input_name(model_dir):
    """The only input of the model's serving signature."""
    from graphtap.rewrite import protos

    with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
        meta_graph = protos.SavedModel.FromString(f.read()).meta_graphs[0]
    (name,) = meta_graph.signature_def["serving_default"].inputs
    return name


def main(_):
    os.makedirs(FLAGS.workdir, exist_ok=True)
    tapped, data = prepare()
    name = input_name(tapped)
    peaks = {}
    for count, path in data.items():
        out = os.path.join(FLAGS.workdir, f"stats_{count}")
        child = subprocess.run([sys.executable, "-c", DUMP, tapped, path, out,
                                str(FLAGS.batch_size), name], check=True, capture_output=True,
                               text=True, env=ENV)
        kib, seconds = child.stdout.split()[-2:]
        peaks[count] = int(kib) / 1024
        size = os.path.getsize(path) / 2**20
        print(f"{count:>6} examples ({size:.0f} MiB of input): peak RSS {peaks[count]:.0f} MiB, "
              f"{float(seconds):.1f} s")
    small, large = min(peaks), max(peaks)
    print(f"peak RSS ratio {large} / {small} examples: {peaks[large] / peaks[small]:.3f}")


if __name__ == "__main__":
    app.run(main)

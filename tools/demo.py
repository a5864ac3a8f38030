"""The README's first command: build a small Keras model, tap it with the CLI, and print
one inference of the tapped model.

    python tools/demo.py
"""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(ROOT, "testdata")


def main():
    model_dir = os.path.join(TESTDATA, "keras_cnn")
    tapped_dir = os.path.join(TESTDATA, "keras_cnn_tapped")
    if not os.path.isdir(model_dir):
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        import make_testdata

        make_testdata.build(TESTDATA, only=["keras_cnn"])
        print(f"built {model_dir}")
    command = [sys.executable, "-m", "graphtap", "tap", f"--input={model_dir}",
               f"--output={tapped_dir}", "--tap_name=cnn_1/dense_1/Relu=hidden",
               "--tap_op=Relu", "--overwrite"]
    print("$ graphtap " + " ".join(command[3:]))
    subprocess.run(command, check=True)

    import tensorflow as tf

    serve = tf.saved_model.load(tapped_dir).signatures["serving_default"]
    image = np.random.default_rng(0).standard_normal((1, 16, 16, 3)).astype("float32")
    print("\none inference of the tapped model's serving_default:")
    for key, value in sorted(serve(image=tf.constant(image)).items()):
        values = value.numpy().ravel()
        shape = str(tuple(value.shape))
        print(f"  {key:24s} shape={shape:16s} first values={np.round(values[:4], 4)}")


if __name__ == "__main__":
    main()

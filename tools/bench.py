"""Benchmarks: whole-process `graphtap tap` against `python -c "import tensorflow"`.

The two commands run alternately, `--repeats` times each, on Keras 3 exports of
keras.applications models (weights=None, built once into --workdir). Reported: median and
min-max wall time, their ratio, and each process's peak RSS (from wait4).

    python tools/bench.py [--models=resnet50,densenet121] [--repeats=7]
"""

import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_list("models", ["resnet50", "densenet121"], "keras.applications models to use.")
flags.DEFINE_integer("repeats", 7, "Runs of each command.")
flags.DEFINE_string("workdir", "/tmp/graphtap-bench", "Where exports and outputs go.")
FLAGS = flags.FLAGS

APPLICATIONS = {"resnet50": "ResNet50", "densenet121": "DenseNet121", "mobilenetv2": "MobileNetV2",
                "efficientnetb0": "EfficientNetB0"}


def export(name):
    """The model's Keras 3 export under --workdir (built on first use).

    Built in a child process: this one must stay small, because a child's peak RSS, as
    the kernel reports it, starts from its parent's size at fork.
    """
    path = os.path.join(FLAGS.workdir, name)
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        code = (f"import keras; keras.applications.{APPLICATIONS[name]}(weights=None)"
                f".export({path!r}, verbose=False)")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return path


def timed_process(command):
    """(seconds, peak RSS in MiB) of one child process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {child.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024


def summary(values, unit):
    return f"{statistics.median(values):.3f}{unit} ({min(values):.3f}-{max(values):.3f})"


def process_benchmark(name):
    model_dir = export(name)
    output = os.path.join(FLAGS.workdir, f"{name}_tapped")
    tap = [sys.executable, "-m", "graphtap", "tap", f"--input={model_dir}",
           f"--output={output}", "--tap_op=Relu", "--overwrite"]
    import_tf = [sys.executable, "-c", "import tensorflow"]
    runs = {"tap": [], "import": []}
    for _ in range(FLAGS.repeats):
        runs["tap"].append(timed_process(tap))
        runs["import"].append(timed_process(import_tf))
    tap_s = [s for s, _ in runs["tap"]]
    import_s = [s for s, _ in runs["import"]]
    pb_mib = os.path.getsize(os.path.join(model_dir, "saved_model.pb")) / 2**20
    return [
        name,
        f"{pb_mib:.1f} MiB",
        summary(tap_s, " s"),
        summary(import_s, " s"),
        f"{statistics.median(tap_s) / statistics.median(import_s):.3f}",
        f"{max(r for _, r in runs['tap']):.0f} MiB",
        f"{max(r for _, r in runs['import']):.0f} MiB",
    ]


def print_table(header, rows):
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


def main(_):
    os.makedirs(FLAGS.workdir, exist_ok=True)
    rows = [process_benchmark(name) for name in FLAGS.models]
    print(f"whole process, median (min-max) of {FLAGS.repeats} alternated runs, tapping every Relu")
    print_table(("model", "saved_model.pb", "graphtap tap", "import tensorflow", "tap/import",
                 "tap peak RSS", "import peak RSS"), rows)


if __name__ == "__main__":
    app.run(main)

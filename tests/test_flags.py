"""The tap flags as other absl scripts use them, and each verb's own flags."""

import json
import subprocess
import sys

from conftest import child_env

PIPELINE = '''
from absl import app, flags

import graphtap
import graphtap.cli  # defines no flag of its own on absl's global FLAGS
from graphtap.flags import define_tap_flags

flags.DEFINE_string("input", None, "the pipeline's own input")
flags.DEFINE_string("output", None, "the pipeline's own output")
TAP = define_tap_flags(prefix="graphtap_")
FLAGS = flags.FLAGS


def main(argv):
    report = graphtap.tap(FLAGS.input, FLAGS.output, TAP.options())
    print(",".join(sorted(record.key for record in report.taps)))


app.run(main)
'''


def test_a_pipeline_script_with_its_own_input_flag_taps(keras_cnn, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE, f"--input={keras_cnn[0]}", f"--output={out}",
         "--graphtap_tap_name=cnn_1/dense_1/Relu=hidden", "--graphtap_tap_op=Softmax",
         "--graphtap_signature_def=serving_default"],
        capture_output=True, text=True, env=child_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    keys = result.stdout.split()[-1].split(",")
    assert "hidden" in keys and len(keys) == 2
    with open(out / "assets.extra" / "graphtap.json") as f:
        assert sorted(t["key"] for t in json.load(f)["taps"]) == sorted(keys)


def test_each_verb_shows_its_own_flags():
    def help_of(verb):
        result = subprocess.run([sys.executable, "-m", "graphtap", verb, "--help"],
                                capture_output=True, text=True, env=child_env(), timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    tap, dump, listing = help_of("tap"), help_of("dump"), help_of("list")
    assert "--tap_name" in tap and "--[no]link_variables" in tap and "--tfrecord" not in tap
    assert "--tfrecord" in dump and "--tap_name" not in dump
    assert "--filter" in listing and "--output" not in listing

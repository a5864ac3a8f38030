"""The command line: output, exit status, and bad input handled without harm.

These run `python -m graphtap` in subprocesses, which never import TensorFlow for a
SavedModel, so each costs a fraction of a second.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import child_env, tree_digest
from loaders import run_tf1, run_tf2


def graphtap_cli(*args):
    return subprocess.run([sys.executable, "-m", "graphtap", *args], capture_output=True,
                          text=True, env=child_env(), timeout=300)


def test_tap_prints_table_and_result_loads(keras_cnn, tmp_path):
    path, _ = keras_cnn
    out = str(tmp_path / "tapped")
    result = graphtap_cli("tap", f"--input={path}", f"--output={out}",
                          "--tap_name=.*/dense_1/Relu=hidden", "--tap_op=Softmax")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no TensorFlow start-up noise
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["signature", "key", "op", "dtype", "shape", "tensor"]
    assert any(line.split()[:3] == ["serving_default", "hidden", "Relu"] for line in lines)
    # Keras 3 `export` writes `serve` too, running the same function: tapped alike.
    assert any(line.split()[:3] == ["serve", "hidden", "Relu"] for line in lines)
    assert lines[-2:] == ["signature 'serve' runs the same function as 'serving_default': "
                          "tapped too", f"tapped 4 tensor(s) -> {out}"]
    images = {"image": np.ones((1, 16, 16, 3), "float32")}
    assert sorted(run_tf2(out, "serving_default", images)) == [
        "cnn_1_probs_1_Softmax", "hidden", "output_0"]


def test_list_shows_tensor_names_and_loop_bodies(keras_lstm):
    path, _ = keras_lstm
    result = graphtap_cli("list", f"--input={path}")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows["rnn_1/head_1/BiasAdd"].split()[1:3] == ["BiasAdd", "float32"]
    assert "no: inside" in rows["rnn_1/lstm_1/while/lstm_cell_1/Sigmoid"]
    assert rows["rnn_1/lstm_1/while:4"].split()[-1] == "yes"


def test_help_and_usage():
    result = graphtap_cli("--help")
    assert result.returncode == 0 and "--tap_name" in result.stdout
    result = graphtap_cli("frobnicate")
    assert result.returncode == 2 and result.stderr.startswith("graphtap: error: usage")
    result = graphtap_cli("tap", "--no_such_flag=1")
    assert result.returncode == 2
    assert result.stderr.strip() == "graphtap: error: Unknown command line flag 'no_such_flag'"


def _corrupt_copy(source, tmp_path):
    copy = tmp_path / "corrupt"
    shutil.copytree(source, copy)
    pb = copy / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:1000])
    return str(copy)


BAD_INPUTS = {
    "missing path": (lambda m, t: str(t / "nope"), [".*"], "no such file or directory"),
    "not a SavedModel": (lambda m, t: str(t.joinpath("empty").mkdir() or t / "empty"), [".*"],
                         "directory has no saved_model.pb"),
    "corrupt pb": (lambda m, t: _corrupt_copy(m["keras_cnn"], t), [".*"],
                   "not a valid SavedModel protobuf"),
    "selector matches nothing": (lambda m, t: m["keras_cnn"], ["--tap_name=.*/Relu7"],
                                 "name selector '.*/Relu7' matches no tappable tensor"),
    "op in a While body": (lambda m, t: m["keras_lstm"], ["--tap_op=Sigmoid"],
                           "the 'body' of While node 'rnn_1/lstm_1/while'"),
    "unknown layer": (lambda m, t: m["keras_cnn"], ["--tap_layer=dense", "--tap_layer=densse"],
                      "no Keras layer 'densse'; the layers are: add, bn, conv, conv_res, dense"),
    "unknown signature": (lambda m, t: m["keras_cnn"], ["--tap_op=Relu", "--signature_def=nah"],
                          "no signature 'nah'; it has serve, serving_default"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_nothing_written(case, keras_cnn, keras_lstm, tmp_path):
    make_input, selectors, message = BAD_INPUTS[case]
    models = {"keras_cnn": keras_cnn[0], "keras_lstm": keras_lstm[0]}
    source = make_input(models, tmp_path)
    before = tree_digest(source) if os.path.exists(source) else None
    selectors = selectors if selectors[0].startswith("--") else [f"--tap_name={selectors[0]}"]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = graphtap_cli("tap", f"--input={source}", f"--output={out_dir / 'tapped'}", *selectors)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("graphtap: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if before is not None:
        assert tree_digest(source) == before
    assert os.listdir(out_dir) == []  # neither output nor staging directory


def test_existing_output_is_refused_then_overwritten(keras_cnn, tmp_path):
    path, _ = keras_cnn
    out = tmp_path / "tapped"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    args = ("tap", f"--input={path}", f"--output={out}", "--tap_op=Relu")
    result = graphtap_cli(*args)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"graphtap: error: output exists; pass --overwrite to replace it ({out})")
    assert os.listdir(out) == ["precious.txt"]
    # --overwrite replaces only what graphtap wrote.
    result = graphtap_cli(*args, "--overwrite")
    assert result.returncode == 2 and "graphtap did not write" in result.stderr
    assert os.listdir(out) == ["precious.txt"]
    (out / "precious.txt").unlink()
    out.rmdir()
    assert graphtap_cli("tap", f"--input={path}", f"--output={out}", "--tap_op=Softmax"
                        ).returncode == 0
    assert graphtap_cli(*args, "--overwrite").returncode == 0
    assert '"op": "Relu"' in (out / "assets.extra" / "graphtap.json").read_text()
    assert sorted(os.listdir(tmp_path)) == ["tapped"]


def test_output_inside_input_is_refused(keras_cnn):
    path, _ = keras_cnn
    before = tree_digest(path)
    result = graphtap_cli("tap", f"--input={path}", f"--output={path}/tapped", "--tap_op=Relu")
    assert result.returncode == 2 and "output is the input or lies inside it" in result.stderr
    result = graphtap_cli("tap", f"--input={path}", f"--output={path}", "--tap_op=Relu",
                          "--overwrite")
    assert result.returncode == 2
    assert tree_digest(path) == before


def _python(code, *args, **env):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, env=child_env(**env), timeout=300)


TAP_EACH = (
    "import sys, graphtap\n"
    "for i, path in enumerate(sys.argv[2:]):\n"
    "    graphtap.list_targets(path)\n"
    "    out = f'{sys.argv[1]}/{i}' + ('.pb' if path.endswith('.pb') else '')\n"
    "    graphtap.tap(path, out, ops=['Relu'])\n"
    "print('tensorflow' in sys.modules, 'numpy' in sys.modules)\n"
)


def test_tap_and_list_never_import_tensorflow_or_numpy(keras_cnn, nested_module, tf1_builder,
                                                       frozen_graph, tmp_path):
    inputs = [keras_cnn[0], nested_module[0], tf1_builder[0], frozen_graph[0]]
    # A fresh op-registry cache: the frozen GraphDef makes a child process fill it.
    result = _python(TAP_EACH, tmp_path / "ours", *inputs, GRAPHTAP_CACHE_DIR=str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"
    assert sorted(os.listdir(tmp_path / "ours")) == ["0", "1", "2", "3.pb"]
    assert len(os.listdir(tmp_path / "c")) == 1

    # The same taps made with TensorFlow's own message classes are the same bytes.
    result = _python(TAP_EACH, tmp_path / "tf", *inputs, GRAPHTAP_PROTOS="tensorflow")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True True"
    for name in ("0", "1", "2"):
        ours = (tmp_path / "ours" / name / "saved_model.pb").read_bytes()
        assert ours == (tmp_path / "tf" / name / "saved_model.pb").read_bytes()
    assert (tmp_path / "ours" / "3.pb").read_bytes() == (tmp_path / "tf" / "3.pb").read_bytes()


@pytest.mark.compat("saved_model_cli show / run")
def test_saved_model_cli_show_and_run(keras_cnn, tmp_path):
    path, _ = keras_cnn
    out = str(tmp_path / "tapped")
    assert graphtap_cli("tap", f"--input={path}", f"--output={out}",
                        "--tap_name=cnn_1/dense_1/Relu=hidden").returncode == 0
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    show = subprocess.run([cli, "show", "--dir", out, "--tag_set", "serve", "--signature_def",
                           "serving_default"], capture_output=True, text=True, env=env)
    assert show.returncode == 0, show.stderr
    assert "outputs['hidden'] tensor_info:" in show.stdout
    assert "shape: (-1, 16)" in show.stdout
    images = np.random.default_rng(5).standard_normal((2, 16, 16, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    run = subprocess.run([cli, "run", "--dir", out, "--tag_set", "serve", "--signature_def",
                          "serving_default", "--inputs", f"image={tmp_path / 'images.npy'}",
                          "--outdir", str(tmp_path / "npy")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    expected = run_tf1(out, "serving_default", {"image": images})
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "hidden.npy"), expected["hidden"])
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "output_0.npy"), expected["output_0"])


def test_list_filter_json_and_tap_exclude(keras_lstm, tmp_path):
    path, _ = keras_lstm
    result = graphtap_cli("list", f"--input={path}", "--filter=lstm_cell_1/Sigmoid",
                          "--format=json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all("lstm_cell_1/Sigmoid" in row["name"] for row in rows)
    in_loop = [row for row in rows if "/while/" in row["name"]]
    assert in_loop and all(not row["tappable"] and "While" in row["why_not"] for row in in_loop)
    assert all(row["tappable"] and row["shape"] == [-1, 4]
               for row in rows if "/while/" not in row["name"])

    out = str(tmp_path / "tapped")
    result = graphtap_cli("tap", f"--input={path}", f"--output={out}", "--tap_op=Sigmoid",
                          "--exclude=.*/while/.*")
    assert result.returncode == 0, result.stderr
    sequences = {"sequence": np.ones((2, 5, 3), "float32")}
    outputs = run_tf1(out, "serving_default", sequences)
    assert sorted(outputs) == ["output_0", "rnn_1_lstm_1_lstm_cell_1_Sigmoid",
                               "rnn_1_lstm_1_lstm_cell_1_Sigmoid_1",
                               "rnn_1_lstm_1_lstm_cell_1_Sigmoid_2"]
    assert all(0 < v.min() and v.max() < 1 for k, v in outputs.items() if "Sigmoid" in k)
    result = graphtap_cli("tap", f"--input={path}", f"--output={out}2", "--tap_op=Sigmoid",
                          "--exclude=.*")
    assert result.returncode == 2 and "every selected tensor is excluded" in result.stderr


def test_an_internal_error_is_one_line_unless_verbose(keras_cnn, tmp_path):
    """A bug (simulated: the index fails) is reported in one line; --verbosity shows it all."""
    path, _ = keras_cnn
    code = ("import sys, graphtap.rewrite.index as index, graphtap.cli as cli\n"
            "def broken(*args, **kwargs): raise KeyError('simulated')\n"
            "index.GraphIndex.candidates_from = broken\n"
            "sys.argv = ['graphtap', *sys.argv[1:]]\ncli.run()\n")
    args = ["tap", f"--input={path}", f"--output={tmp_path / 'out'}", "--tap_op=Relu"]
    quiet = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           env=child_env(), timeout=120)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [
        "graphtap: internal error: KeyError: 'simulated' (a graphtap bug, please report; "
        "--verbosity=1 shows the traceback)"]
    verbose = subprocess.run([sys.executable, "-c", code, *args, "--verbosity=1"],
                             capture_output=True, text=True, env=child_env(), timeout=120)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    assert not (tmp_path / "out").exists()

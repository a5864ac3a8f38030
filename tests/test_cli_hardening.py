"""Issue #15, never harm the original: the command line's errors are one printable line with
status 2, Ctrl-C is one line with status 130, no command writes inside its input, and what
graphtap creates or runs is what TensorFlow and the user expect.

Most cases run the real command line in a child process (`graphtap_process`).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import child_env, tree_digest
from loaders import run_tf1, run_tf2

import graphtap
from graphtap import errors
from graphtap.rewrite import opdefs, paths, protos, staging


def graphtap_process(*args, cwd=None, env=None, python=(), **popen):
    """`python [PYTHON] -m graphtap ARGS` from this checkout. SIGINT is reset to its default
    in the child: a test run started in the background may have inherited it ignored."""
    return subprocess.Popen([sys.executable, *python, "-m", "graphtap", *args], cwd=cwd,
                            stdout=popen.pop("stdout", subprocess.PIPE),
                            stderr=subprocess.PIPE, text=True, env=env or child_env(),
                            preexec_fn=_default_sigint, **popen)


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def graphtap_cli(*args, **options):
    process = graphtap_process(*args, **options)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def assert_one_error_line(status, stderr, *words):
    """An error as the CLI must print it: status 2, `graphtap: error: ...` on one line."""
    assert status == 2, stderr
    assert len(stderr.splitlines()) == 1 and stderr.endswith("\n"), stderr
    assert stderr.startswith("graphtap: error: "), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in stderr, stderr


def _copy(model, tmp_path, name="model"):
    path = str(tmp_path / name)
    shutil.copytree(model, path)
    return path


# 7. The op-registry child neither runs a `tensorflow/` from the current directory nor hangs.

def test_registry_child_ignores_tensorflow_in_working_directory(frozen_graph, tmp_path):
    """A frozen GraphDef has no op list, so with an empty cache graphtap asks a child
    process for TensorFlow's registry; a `tensorflow/` package where graphtap runs must
    not be what the child imports. graphtap runs as its console script does, without the
    working directory on its path (-P): `python -m` puts it there, and then any package
    in it runs, graphtap's own imports first."""
    marker = tmp_path / "fake_tensorflow_ran"
    workdir = tmp_path / "work"
    (workdir / "tensorflow").mkdir(parents=True)
    (workdir / "tensorflow" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    out = tmp_path / "tapped.pb"
    status, stdout, stderr = graphtap_cli(
        "tap", f"--input={frozen_graph[0]}", f"--output={out}", "--tap_op=Relu",
        cwd=workdir, env=child_env(GRAPHTAP_CACHE_DIR=str(cache)), python=["-P"])
    assert status == 0, stderr
    assert not marker.exists()
    assert out.is_file() and os.listdir(cache)  # the real registry was read, and cached
    # The planted package does run for a Python that puts the working directory first.
    subprocess.run([sys.executable, "-c", "import tensorflow"], cwd=workdir, check=True)
    assert marker.exists()


def test_registry_child_that_hangs_is_killed(frozen_graph, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHTAP_CACHE_DIR", str(tmp_path / "cache"))
    pid_file = tmp_path / "child.pid"
    monkeypatch.setattr(opdefs, "_DUMP_OP_LIST", textwrap.dedent(f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(3600)  # stands for an import that never returns
        """))
    monkeypatch.setattr(opdefs, "REGISTRY_TIMEOUT", 3)
    opdefs._registered_op_defs.cache_clear()
    try:
        with pytest.raises(errors.UnknownOp, match="registry could not be read: no answer in 3 s"):
            graphtap.tap(frozen_graph[0], str(tmp_path / "out.pb"), ops=["Relu"])
    finally:
        opdefs._registered_op_defs.cache_clear()  # the next lookup reads the real registry
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(int(pid_file.read_text()), 0)
    assert not (tmp_path / "out.pb").exists()


# 12. Ctrl-C: one line, status 130, nothing staged left behind, no output.

def _assert_interrupted(process, out):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert stderr == "graphtap: interrupted\n" and stdout == ""
    assert not os.path.lexists(out)
    parent = os.path.dirname(out)
    assert [n for n in os.listdir(parent) if ".graphtap-" in n] == []


# Runs the CLI with its write held at the named point "before publish" (the output is
# staged whole) until the FIFO argv[1] has a writer and delivers EOF.
_BLOCK_BEFORE_PUBLISH = """
import sys
from graphtap.rewrite import staging
fifo = sys.argv.pop(1)
def block(point):
    if point == "before publish":
        with open(fifo, "rb") as f:
            f.read()
staging.checkpoint = block
sys.argv[0] = "graphtap"
from graphtap.cli import run
run()
"""


def test_ctrl_c_while_writing_removes_what_was_staged(keras_cnn, tmp_path):
    """SIGINT while the output is staged: the test signals once the child has opened the
    FIFO, which it does only inside the write, and checks that the staging directory exists
    then and is gone after."""
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    out = str(out_dir / "tapped")
    process = subprocess.Popen(
        [sys.executable, "-c", _BLOCK_BEFORE_PUBLISH, str(fifo), "tap",
         f"--input={keras_cnn[0]}", f"--output={out}", "--tap_op=Relu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        preexec_fn=_default_sigint)
    with open(fifo, "wb"):  # returns once the child blocks on the FIFO, inside the write
        staged = [n for n in os.listdir(out_dir) if n.startswith(staging.staging_prefix(out))]
        assert len(staged) == 1, os.listdir(out_dir)
        assert os.path.isfile(out_dir / staged[0] / staging.CONTENT / "saved_model.pb")
        process.send_signal(signal.SIGINT)
        _assert_interrupted(process, out)
    assert os.listdir(out_dir) == []


# 16. Errors are one printable line: no control characters, staging paths, raw lists.

def test_control_characters_are_escaped(keras_cnn, tmp_path):
    path = keras_cnn[0]
    out = str(tmp_path / "out")
    status, _, stderr = graphtap_cli("tap", f"--input={path}", f"--output={out}",
                                     "--signature_def=evil\n\x1b[2Jname")
    assert_one_error_line(status, stderr, "no signature 'evil\\n\\x1b[2Jname'")
    assert "\x1b" not in stderr
    status, _, stderr = graphtap_cli("tap", f"--input={path}\r\x07", f"--output={out}",
                                     "--tap_op=Relu")
    assert_one_error_line(status, stderr, f"no such file or directory ({path}\\r\\x07)")
    status, _, stderr = graphtap_cli("tap", f"--input={path}", f"--output={out}",
                                     "--tap_name=[a\nb")
    assert_one_error_line(status, stderr, "[a\\nb")
    status, _, stderr = graphtap_cli("tap", "--no_such\x1bflag=1")
    assert_one_error_line(status, stderr, "no_such\\x1bflag")
    assert not os.path.exists(out)


def test_long_messages_are_cut(keras_cnn, tmp_path):
    name = "s" * 5000
    status, _, stderr = graphtap_cli("tap", f"--input={keras_cnn[0]}",
                                     f"--output={tmp_path / 'out'}", f"--signature_def={name}")
    assert_one_error_line(status, stderr, "no signature 'sss")
    line = stderr.rstrip("\n")
    assert len(line) == len("graphtap: error: ") + 500 and line.endswith("s\u2026")


def test_a_link_cycle_is_one_line_naming_the_link(keras_cnn, tmp_path):
    """A symlink cycle among the input's assets is refused where it closes, not followed
    until the kernel refuses."""
    model = _copy(keras_cnn[0], tmp_path)
    os.makedirs(os.path.join(model, "assets"), exist_ok=True)
    os.symlink(os.path.join("..", "assets"), os.path.join(model, "assets", "loop"))
    out = tmp_path / "out"
    status, _, stderr = graphtap_cli("tap", f"--input={model}", f"--output={out}",
                                     "--tap_op=Relu")
    assert_one_error_line(status, stderr, "a link leads back into a directory above it "
                          f"({model}/assets/loop)")
    assert "[(" not in stderr and ".graphtap-" not in stderr
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_errors_name_the_output_not_its_staging_path(keras_cnn, tmp_path):
    """An input whose `assets.extra` is a file: writing the manifest into the staged copy
    fails there, and the error names the output's path instead."""
    model = _copy(keras_cnn[0], tmp_path)
    with open(os.path.join(model, "assets.extra"), "w") as f:
        f.write("not a directory")
    out = tmp_path / "out"
    status, _, stderr = graphtap_cli("tap", f"--input={model}", f"--output={out}",
                                     "--tap_op=Relu")
    assert_one_error_line(status, stderr, f"File exists ({out / 'assets.extra'})")
    assert ".graphtap-" not in stderr
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_one_line_escapes():
    from graphtap.cli import one_line

    assert one_line("caf\u00e9\t\u2028\\d") == "caf\u00e9\\t\\u2028\\d"


# 18. Node names graphtap derives from a signature name are valid TensorFlow node names.

NODE_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/]*(>[A-Za-z0-9.][A-Za-z0-9_.\-/]*)*")


def test_tapped_signature_with_a_space_loads_in_both_loaders(keras_cnn, tmp_path):
    path, _ = keras_cnn
    out = str(tmp_path / "out")
    status, _, stderr = graphtap_cli("tap", f"--input={path}", f"--output={out}",
                                     "--tap_name=.*/dense_1/Relu=hidden", "--mode=add",
                                     "--tapped_signature=tapped v2")
    assert status == 0, stderr
    with open(os.path.join(out, "saved_model.pb"), "rb") as f:
        graph_def = protos.SavedModel.FromString(f.read()).meta_graphs[0].graph_def
    assert all(NODE_NAME.fullmatch(node.name) for node in graph_def.node)
    images = {"image": np.ones((1, 16, 16, 3), "float32")}
    expected = run_tf2(path, "serving_default", images)["output_0"]
    for run in (run_tf1, run_tf2):
        outputs = run(out, "tapped v2", images)
        assert sorted(outputs) == ["hidden", "output_0"]
        np.testing.assert_array_equal(outputs["output_0"], expected)


# 20. No command writes inside its input; arguments that are ignored or misleading are errors.

def test_check_not_inside_compares_what_paths_lead_to(keras_cnn, tmp_path):
    model = _copy(keras_cnn[0], tmp_path)
    link = tmp_path / "link"
    os.symlink(model, link)
    inside = [model, os.path.join(model, "variables"), os.path.join(model, "new", "deeper"),
              str(link / "acts"), str(tmp_path / "elsewhere" / ".." / "model" / "acts"),
              str(link / "assets" / ".." / "variables" / "x")]
    for output in inside:
        with pytest.raises(errors.OutputInsideInput, match="is the input or lies inside it"):
            paths.check_not_inside(model, output)
    with pytest.raises(errors.OutputInsideInput, match="output contains the input"):
        paths.check_not_inside(model, str(tmp_path))
    with pytest.raises(errors.OutputInsideInput, match="output contains the input"):
        paths.check_not_inside(os.path.join(model, "saved_model.pb"), model)
    for output in (str(tmp_path / "model2"), str(tmp_path / "sibling" / "model"),
                   str(link) + "_acts"):
        paths.check_not_inside(model, output)


@pytest.mark.parametrize("command", ["dump --out", "dump --out --overwrite",
                                     "dump --tensorboard", "profile --logdir"])
def test_commands_refuse_to_write_inside_their_input(command, keras_cnn, tmp_path):
    model = _copy(keras_cnn[0], tmp_path)
    np.save(tmp_path / "image.npy", np.ones((2, 16, 16, 3), "float32"))
    before = tree_digest(model)
    inputs = f"--inputs=image={tmp_path / 'image.npy'}"
    args = {
        "dump --out": ["dump", f"--model={model}", inputs, f"--out={model}/acts"],
        "dump --out --overwrite": ["dump", f"--model={model}", inputs, f"--out={model}",
                                   "--overwrite"],
        "dump --tensorboard": ["dump", f"--model={model}", inputs, f"--out={tmp_path / 'acts'}",
                               f"--tensorboard={model}/assets/tb"],
        "profile --logdir": ["profile", f"--input={model}", inputs, f"--logdir={model}/prof"],
    }[command]
    status, _, stderr = graphtap_cli(*args)
    assert_one_error_line(status, stderr, "output is the input or lies inside it")
    assert tree_digest(model) == before
    assert sorted(os.listdir(tmp_path)) == ["image.npy", "model"]


def test_dump_refuses_to_replace_a_directory_holding_its_data(keras_cnn, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    np.save(data_dir / "image.npy", np.ones((2, 16, 16, 3), "float32"))
    with pytest.raises(errors.OutputInsideInput, match="output contains the input"):
        graphtap.dump(keras_cnn[0], {"image": graphtap.NpyFile(str(data_dir / "image.npy"))},
                      str(data_dir), overwrite=True, progress=False)
    assert os.listdir(data_dir) == ["image.npy"]


def test_repeated_signature_is_tapped_once(keras_cnn, tmp_path):
    out = tmp_path / "out"
    status, stdout, stderr = graphtap_cli("tap", f"--input={keras_cnn[0]}", f"--output={out}",
                                          "--tap_op=Relu", "--signature_def=serving_default",
                                          "--signature_def=serving_default")
    assert status == 0, stderr
    with open(out / "assets.extra" / "graphtap.json") as f:
        taps = json.load(f)["taps"]
    assert len(taps) == 3 and len({t["key"] for t in taps}) == 3
    assert stdout.splitlines()[-1] == f"tapped 3 tensor(s) -> {out}"


def test_tapped_signature_needs_mode_add(keras_cnn, tmp_path):
    out = tmp_path / "out"
    status, _, stderr = graphtap_cli("tap", f"--input={keras_cnn[0]}", f"--output={out}",
                                     "--tap_op=Relu", "--tapped_signature=mine")
    assert_one_error_line(status, stderr, "--tapped_signature", "--mode=add")
    with pytest.raises(errors.BadArgument, match="only in mode 'add'") as caught:
        graphtap.tap(keras_cnn[0], str(out), ops=["Relu"], tapped_signature="mine")
    assert "--" not in str(caught.value)  # library errors name no flags
    assert not out.exists()


def test_reserved_tapped_signature_is_refused(keras_cnn, tmp_path):
    out = tmp_path / "out"
    status, _, stderr = graphtap_cli("tap", f"--input={keras_cnn[0]}", f"--output={out}",
                                     "--tap_op=Relu", "--mode=add",
                                     "--tapped_signature=__saved_model_init_op")
    assert_one_error_line(status, stderr, "reserved signature name", "__saved_model_init_op")
    assert not out.exists()


def test_bad_arguments_have_their_own_class(keras_cnn, tmp_path):
    for options in ({"mode": "replace"}, {"loop": "first"}):
        with pytest.raises(errors.BadArgument):
            graphtap.tap(keras_cnn[0], str(tmp_path / "out"), ops=["Relu"], **options)


def test_full_stdout_says_the_output_was_written(keras_cnn, tmp_path):
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        status, _, stderr = graphtap_cli("tap", f"--input={keras_cnn[0]}", f"--output={out}",
                                         "--tap_op=Relu", stdout=full)
    assert_one_error_line(status, stderr, "the output was written, but the report could not "
                          f"be printed: No space left on device ({out})")
    assert sorted(run_tf2(str(out), "serving_default",
                          {"image": np.ones((1, 16, 16, 3), "float32")})) == [
        "cnn_1_conv_res_1_Relu", "cnn_1_dense_1_Relu", "cnn_1_relu_1_Relu", "output_0"]


def test_closed_stdout_is_no_error(keras_cnn, tmp_path):
    """stdout into `head` that has exited: the pipe's read end is closed before graphtap
    writes, so it meets a broken pipe whatever the timing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    for args in (("list", f"--input={keras_cnn[0]}"),
                 ("tap", f"--input={keras_cnn[0]}", f"--output={tmp_path / 'out'}",
                  "--tap_op=Relu")):
        status, _, stderr = graphtap_cli(*args, stdout=write_end)
        assert (status, stderr) == (0, "")
    os.close(write_end)
    assert (tmp_path / "out" / "saved_model.pb").is_file()

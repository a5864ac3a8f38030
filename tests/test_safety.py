"""Never harm the original: no shared files, no following links out, whole outputs only.

Each test writes through the real write path (in process or as the command line) and
checks the ORIGINAL afterwards, byte for byte and by running it.
"""

import fcntl
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from conftest import child_env, tree_digest
from loaders import run_tf2

import graphtap
from graphtap import errors
from graphtap.rewrite import staging

IMAGES = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")


def graphtap_run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "graphtap", *args], capture_output=True,
                          text=True, env=env or child_env(), timeout=timeout)


def _with_asset(source, directory):
    """A copy of the SavedModel `source` with a file in its assets."""
    shutil.copytree(source, directory)
    os.makedirs(os.path.join(directory, "assets"), exist_ok=True)
    with open(os.path.join(directory, "assets", "vocab.txt"), "w") as f:
        f.write("alpha\nbeta\n")
    return str(directory)


def _staging_dirs(parent):
    return sorted(n for n in os.listdir(parent) if n.startswith(staging.PREFIX))


class Module(tf.Module):
    def __init__(self):
        super().__init__()
        self.v = tf.Variable([5.0, 6.0])

    @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
    def __call__(self, x):
        return {"y": x * self.v}


def test_writing_into_the_output_leaves_the_original_as_it_was(keras_cnn, tmp_path):
    model = _with_asset(keras_cnn[0], tmp_path / "model")
    before, expected = tree_digest(model), run_tf2(model, "serving_default", {"image": IMAGES})
    out = tmp_path / "tapped"
    graphtap.tap(model, str(out), ops=["Relu"])
    # What users do with a copy: save a checkpoint over its variables, save another model
    # into it, edit an asset in place and append to it.
    tf.train.Checkpoint(v=tf.Variable([1.0, 2.0])).write(str(out / "variables" / "variables"))
    with open(out / "assets" / "vocab.txt", "r+") as f:
        f.write("XXXXX")
    with open(out / "assets" / "vocab.txt", "a") as f:
        f.write("gamma\n")
    tf.saved_model.save(Module(), str(out))
    assert tree_digest(model) == before
    actual = run_tf2(model, "serving_default", {"image": IMAGES})
    assert actual["output_0"].tobytes() == expected["output_0"].tobytes()
    # The writes did reach the copy: the test above could have failed.
    assert (out / "assets" / "vocab.txt").read_text() != "alpha\nbeta\n"


def test_link_variables_links_only_the_variables(keras_cnn, tmp_path):
    model = _with_asset(keras_cnn[0], tmp_path / "model")
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    graphtap.tap(model, str(linked), ops=["Relu"], link_variables=True)
    graphtap.tap(model, str(copied), ops=["Relu"])
    index = os.path.join("variables", "variables.index")
    asset = os.path.join("assets", "vocab.txt")

    def same_file(out, relative):
        return os.path.samefile(os.path.join(model, relative), out / relative)

    assert same_file(linked, index) and not same_file(linked, asset)
    assert not same_file(copied, index) and not same_file(copied, asset)
    assert (linked / "saved_model.pb").read_bytes() == (copied / "saved_model.pb").read_bytes()


def test_symlinks_out_of_the_model_are_refused(keras_cnn, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(keras_cnn[0], model)
    (model / "assets").mkdir(exist_ok=True)
    for target, name in (("/etc", "etc"), ("/dev/zero", "zero")):
        os.symlink(target, model / "assets" / name)
        result = graphtap_run("tap", f"--input={model}", f"--output={tmp_path / 'out'}",
                              "--tap_op=Relu")
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "symbolic link leads out of the model" in result.stderr
        assert f"assets/{name}" in result.stderr
        assert not (tmp_path / "out").exists() and _staging_dirs(tmp_path) == []
        os.unlink(model / "assets" / name)


def test_links_inside_the_model_are_copied_as_files(keras_cnn, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(keras_cnn[0], model)
    (model / "assets").mkdir(exist_ok=True)
    (model / "assets" / "vocab.txt").write_text("a\nb\n")
    os.symlink("vocab.txt", model / "assets" / "alias.txt")
    out = tmp_path / "out"
    graphtap.tap(str(model), str(out), ops=["Relu"])
    assert not os.path.islink(out / "assets" / "alias.txt")
    assert (out / "assets" / "alias.txt").read_text() == "a\nb\n"


@pytest.mark.parametrize("where", ["input", "asset"])
def test_fifos_and_devices_are_refused_at_once(keras_cnn, tmp_path, where):
    out = tmp_path / "out"
    if where == "input":
        os.mkfifo(tmp_path / "fifo.pb")
        inputs = [str(tmp_path / "fifo.pb"), "/dev/zero"]
    else:
        model = tmp_path / "model"
        shutil.copytree(keras_cnn[0], model)
        (model / "assets").mkdir(exist_ok=True)
        os.mkfifo(model / "assets" / "pipe")
        inputs = [str(model)]
    for source in inputs:
        # A FIFO would block for ever and /dev/zero fill memory: the timeout is the test.
        result = graphtap_run("tap", f"--input={source}", f"--output={out}", "--tap_op=Relu",
                              timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "not a regular file" in result.stderr
        assert not out.exists() and _staging_dirs(tmp_path) == []


def test_an_input_named_like_a_staging_directory_is_never_removed(keras_cnn, tmp_path):
    """An input whose name (and lock file) make it look like an abandoned staging
    directory of the output, or that lies inside one, survives the cleanup."""
    out = tmp_path / "out"
    lookalike = tmp_path / (staging.staging_prefix(out) + "0123456789ab")
    shutil.copytree(keras_cnn[0], lookalike / "model")
    (lookalike / staging.LOCK_FILE).write_text("")
    before = tree_digest(lookalike)
    for source in (lookalike / "model", lookalike):
        if source == lookalike:  # now the lookalike itself is the model
            for name in os.listdir(lookalike / "model"):
                shutil.move(str(lookalike / "model" / name), lookalike / name)
            os.rmdir(lookalike / "model")
            before = tree_digest(lookalike)
        graphtap.tap(str(source), str(out), ops=["Relu"], overwrite=True)
        assert tree_digest(lookalike) == before
    assert sorted(os.listdir(tmp_path)) == sorted([lookalike.name, "out"])


def test_cleanup_removes_abandoned_staging_only(keras_cnn, tmp_path):
    """A writer killed part way leaves its staging directory, unlocked: the next write of
    the same output removes it. One still locked (a live writer, whatever its pid
    namespace or host) and those of other outputs stay."""
    model, out = keras_cnn[0], tmp_path / "out"
    env = child_env(**{staging.KILL_AT_ENV: "before publish"})
    killed = graphtap_run("tap", f"--input={model}", f"--output={out}", "--tap_op=Relu", env=env)
    assert killed.returncode == -9 and not out.exists()
    (abandoned,) = _staging_dirs(tmp_path)
    with pytest.raises(_Stop), staging.staged_output(str(out)) as live:  # holds its lock
        other = graphtap_run("tap", f"--input={model}", f"--output={tmp_path / 'other'}",
                             "--tap_op=Relu", env=env)
        assert other.returncode == -9
        graphtap.tap(model, str(out), ops=["Relu"])
        remaining = _staging_dirs(tmp_path)
        assert abandoned not in remaining and os.path.basename(live.root) in remaining
        assert len(remaining) == 2  # the live one, and the other output's
        raise _Stop
    assert len(_staging_dirs(tmp_path)) == 1 and (out / "saved_model.pb").is_file()


class _Stop(Exception):
    """Ends a staged write without publishing it."""


def test_a_write_whose_staging_is_tampered_with_publishes_nothing(keras_cnn, tmp_path,
                                                                   monkeypatch):
    """Another process removing files from this write's staging directory (an old
    graphtap, a cleanup script on another host) makes the write fail, not publish."""
    out = tmp_path / "out"
    real_checkpoint = staging.checkpoint

    def tamper(point):
        if point == "staged saved_model.pb":
            root = os.path.join(tmp_path, _staging_dirs(tmp_path)[0], staging.CONTENT)
            os.unlink(os.path.join(root, "variables", "variables.index"))
        real_checkpoint(point)

    monkeypatch.setattr(staging, "checkpoint", tamper)
    with pytest.raises(errors.OutputExists, match="removed this write's staged output"):
        graphtap.tap(keras_cnn[0], str(out), ops=["Relu"])
    assert not out.exists() and _staging_dirs(tmp_path) == []


def _points(model, out, *extra):
    """The fault-injection points a write passes, in order."""
    trace = out.parent / "points.txt"
    result = graphtap_run("tap", f"--input={model}", f"--output={out}", "--tap_op=Relu", *extra,
                          env=child_env(**{staging.TRACE_ENV: str(trace)}))
    assert result.returncode == 0, result.stderr
    points = trace.read_text().splitlines()
    trace.unlink()
    return points


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_a_kill_at_any_point_leaves_the_old_output_or_the_new_one(keras_cnn, tmp_path,
                                                                  overwrite):
    model = keras_cnn[0]
    old, new = tmp_path / "old", tmp_path / "new"
    graphtap.tap(model, str(old), ops=["Softmax"])
    graphtap.tap(model, str(new), ops=["Relu"])
    digests = {tree_digest(old): "old", tree_digest(new): "new"}
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    extra = ("--overwrite",) if overwrite else ()
    if overwrite:
        shutil.copytree(old, out)
    points = _points(model, out, *extra)
    assert points[-2:] == ["before publish", "after publish"]
    assert sum(p.startswith("staged ") for p in points) == 4  # variables x2, pb, manifest
    for point in points:
        shutil.rmtree(out)
        if overwrite:
            shutil.copytree(old, out)
        env = child_env(**{staging.KILL_AT_ENV: point})
        killed = graphtap_run("tap", f"--input={model}", f"--output={out}", "--tap_op=Relu",
                              *extra, env=env)
        assert killed.returncode == -9, (point, killed.stderr)
        expected = "new" if point == "after publish" else ("old" if overwrite else None)
        assert (digests.get(tree_digest(out)) if out.exists() else None) == expected, point
        # The next write removes what the killed one staged.
        again = graphtap_run("tap", f"--input={model}", f"--output={out}", "--tap_op=Relu",
                             "--overwrite")
        assert again.returncode == 0, again.stderr
        assert digests.get(tree_digest(out)) == "new" and _staging_dirs(out.parent) == []


def test_overwrite_without_atomic_exchange(keras_cnn, tmp_path, monkeypatch):
    """Where the kernel cannot exchange two directories, the old output is moved into the
    staging directory, the new one into place, and the old one removed with it."""
    out = tmp_path / "out"
    graphtap.tap(keras_cnn[0], str(out), ops=["Softmax"])
    monkeypatch.setattr(staging, "_libc_renameat2", lambda: None)
    report = graphtap.tap(keras_cnn[0], str(out), ops=["Relu"], overwrite=True)
    assert [r.op for r in report.taps] == ["Relu"] * len(report.taps)
    assert "Relu" in (out / "assets.extra" / "graphtap.json").read_text()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_readers_never_see_the_output_missing_or_partial(keras_cnn, tmp_path):
    """A reader polls the output while 20 `--overwrite`s replace it, alternating between
    two tap sets: every look finds one of the two whole models."""
    model, out = keras_cnn[0], tmp_path / "out"
    versions = {}
    for ops in ("Relu", "Softmax"):
        graphtap.tap(model, str(tmp_path / ops), ops=[ops])
        versions[(tmp_path / ops / "saved_model.pb").read_bytes()] = ops
    shutil.copytree(tmp_path / "Relu", out)
    stop, looks, bad = threading.Event(), [0], []

    def read():
        while not stop.is_set():
            try:
                with open(out / "saved_model.pb", "rb") as f:
                    data = f.read()
                manifest = (out / "assets.extra" / "graphtap.json").stat()
            except OSError as error:
                bad.append(repr(error))
                continue
            if data not in versions or manifest.st_size == 0:
                bad.append(f"partial saved_model.pb of {len(data)} bytes")
            looks[0] += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20):
            op = ("Softmax", "Relu")[i % 2]
            result = graphtap_run("tap", f"--input={model}", f"--output={out}", f"--tap_op={op}",
                                  "--overwrite")
            assert result.returncode == 0, result.stderr
    finally:
        stop.set()
        reader.join()
    assert bad == [] and looks[0] > 20
    assert versions[(out / "saved_model.pb").read_bytes()] == "Relu"


def test_the_output_and_its_parent_are_synced(keras_cnn, tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    graphtap.tap(keras_cnn[0], str(out), ops=["Relu"])
    prefix = os.path.join(str(tmp_path), staging.staging_prefix(out))
    staged = [path for path in synced if path.startswith(prefix)]
    content = os.path.join(staged[0][:staged[0].index(os.sep, len(prefix))], staging.CONTENT)
    relative = {os.path.relpath(path, content) for path in staged}
    # Every file and directory of the new tree, and the staging directory itself.
    assert {"saved_model.pb", "variables/variables.index", "assets.extra/graphtap.json",
            "variables", "assets.extra", ".", ".."} <= relative
    # The parent, after the rename, so that the new name survives a power loss.
    assert synced[-1] == str(tmp_path)


def test_output_names_up_to_the_limit(keras_cnn, tmp_path):
    for length in (230, 255):
        out = tmp_path / ("m" * length)
        graphtap.tap(keras_cnn[0], str(out), ops=["Relu"])
        assert (out / "saved_model.pb").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_overwrite_refuses_an_output_holding_the_input_through_a_bind_mount(keras_cnn, tmp_path):
    """The input is reached through a bind mount of a directory inside the old output:
    path strings differ, the inode does not."""
    old = tmp_path / "out"
    graphtap.tap(keras_cnn[0], str(old), ops=["Relu"])
    shutil.copytree(keras_cnn[0], old / "keep" / "model")
    before = tree_digest(old / "keep" / "model")
    (tmp_path / "mnt").mkdir()
    script = (f"mount --bind {old / 'keep'} {tmp_path / 'mnt'} && "
              f"{sys.executable} -m graphtap tap --input={tmp_path / 'mnt' / 'model'} "
              f"--output={old} --tap_op=Softmax --overwrite")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], capture_output=True, text=True, env=child_env(),
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"graphtap: error: output contains the input ({old})"
    assert tree_digest(old / "keep" / "model") == before


def test_overwrite_only_replaces_what_graphtap_wrote(keras_cnn, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(errors.OutputExists, match="did not write"):
        graphtap.tap(keras_cnn[0], str(precious), ops=["Relu"], overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(tmp_path)) == ["precious"]


def test_lock_is_held_while_staging(tmp_path):
    with staging.staged_output(str(tmp_path / "out")) as staged:
        fd = os.open(os.path.join(staged.root, staging.LOCK_FILE), os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)

"""Session fixtures: the test models are built once per test run, into a temp dir."""

import hashlib
import importlib.util
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Every tap in the suite, in process or in a child, checks its spliced saved_model.pb
# against the whole rewritten message (graphtap/wire.py).
os.environ["GRAPHTAP_VERIFY_SPLICE"] = "1"

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_make_testdata():
    script = ROOT / "tools" / "make_testdata.py"
    spec = importlib.util.spec_from_file_location("make_testdata", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_testdata():
    return _load_make_testdata()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def _model_fixture(name):
    """A session fixture: (path, what the builder returned) for model `name`."""

    @pytest.fixture(scope="session")
    def fixture(make_testdata, models_dir):
        builder, filename = make_testdata.BUILDERS[name]
        path = str(models_dir / filename)
        return path, builder(path)

    return fixture


keras_cnn = _model_fixture("keras_cnn")
keras_lstm = _model_fixture("keras_lstm")
mobilenet_v2 = _model_fixture("mobilenet_v2")
nested_module = _model_fixture("nested_module")
tf1_builder = _model_fixture("tf1_builder")
keras_lstm_sequences = _model_fixture("keras_lstm_sequences")
keras_gru = _model_fixture("keras_gru")
keras_gru_sequences = _model_fixture("keras_gru_sequences")
while_module = _model_fixture("while_module")
branchy = _model_fixture("branchy")
frozen_graph = _model_fixture("frozen_graph")


def child_env(**extra):
    """The environment for a child process that runs this checkout's graphtap."""
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def tree_digest(path):
    """A hash of every file name and content under `path` (or of the file itself)."""
    digest = hashlib.sha256()
    path = pathlib.Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()

"""Session fixtures: the test models are built once per test run, into a temp dir."""

import hashlib
import importlib.util
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_make_testdata():
    spec = importlib.util.spec_from_file_location("make_testdata", ROOT / "tools" / "make_testdata.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_testdata():
    return _load_make_testdata()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def _built(make_testdata, models_dir, name):
    builder, filename = make_testdata.BUILDERS[name]
    path = str(models_dir / filename)
    return path, builder(path)


@pytest.fixture(scope="session")
def keras_cnn(make_testdata, models_dir):
    return _built(make_testdata, models_dir, "keras_cnn")


@pytest.fixture(scope="session")
def mobilenet_v2(make_testdata, models_dir):
    return _built(make_testdata, models_dir, "mobilenet_v2")


@pytest.fixture(scope="session")
def nested_module(make_testdata, models_dir):
    return _built(make_testdata, models_dir, "nested_module")


@pytest.fixture(scope="session")
def tf1_builder(make_testdata, models_dir):
    return _built(make_testdata, models_dir, "tf1_builder")


@pytest.fixture(scope="session")
def frozen_graph(make_testdata, models_dir):
    return _built(make_testdata, models_dir, "frozen_graph")


@pytest.fixture(scope="session")
def keras_lstm(make_testdata, models_dir):
    return _built(make_testdata, models_dir, "keras_lstm")


def tree_digest(path):
    """A hash of every file name and content under `path` (or of the file itself)."""
    digest = hashlib.sha256()
    path = pathlib.Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()

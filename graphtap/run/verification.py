"""Prove a rewrite changed nothing but the extra outputs.

Loads the original and the tapped SavedModel both ways TensorFlow loads one (TF2
`tf.saved_model.load`, and a TF1 Session as TF Serving does), runs every signature on the
same inputs, and checks: each original output of the tapped model is bit-identical to the
original's; each tap of the manifest is there, with the manifest's dtype and a compatible
shape; taps are finite unless the original's outputs are not. Imports TensorFlow.
"""

import dataclasses
import os
import statistics
import time

import numpy as np

from graphtap import errors
from graphtap.rewrite import manifest
from graphtap.run import runtime
from graphtap.rewrite.signatures import runnable_signatures, tags

LOAD_PATHS = ("tf2", "tf1")


@dataclasses.dataclass(frozen=True)
class Check:
    """One output of one signature on one load path."""

    path: str  # "tf2" or "tf1"
    signature: str
    key: str
    is_tap: bool
    shape: tuple
    status: str  # "match", or what is wrong
    max_abs_diff: float = 0.0


@dataclasses.dataclass(frozen=True)
class Verification:
    checks: tuple
    latency: dict  # {signature: (original median s, tapped median s)}, with runs > 1

    @property
    def failures(self):
        """The checks that did not match: the one definition of what fails verification."""
        return tuple(check for check in self.checks if check.status != "match")

    @property
    def ok(self):
        return not self.failures


def verify(original_dir, tapped_dir, inputs=None, runs=1, tag_set="serve", seed=0,
           custom_ops=()):
    """Compares `tapped_dir` against `original_dir`; returns a Verification.

    inputs: {signature input name: array} used for every signature that has the name;
      the others get random inputs of their dtype and shape (seeded by `seed`).
    runs: with more than 1, also times each signature on both models (TF2 path).
    custom_ops: modules to import and `.so` files to load first, for the models' custom
      ops (runtime.load_custom_ops).
    """
    import tensorflow as tf

    taps = _manifest_taps(tapped_dir)
    runtime.load_custom_ops(custom_ops)
    original = _Loaded(tf, original_dir, tags(tag_set))
    tapped = _Loaded(tf, tapped_dir, tags(tag_set))
    rng = np.random.default_rng(seed)
    checks, latency = [], {}
    signatures = runnable_signatures(tapped.signature_defs)
    for signature in signatures:
        signature_taps = {t["key"]: t for t in taps if t["signature"] == signature}
        source = next((t["source_signature"] for t in signature_taps.values()), signature)
        if source not in original.signature_defs:
            continue
        feed = _inputs(original.signature_defs[source], inputs or {}, rng)
        for path in LOAD_PATHS:
            try:
                want = original.run(path, source, feed)
            except tf.errors.InvalidArgumentError as error:
                generated = sorted(set(feed) - set(inputs or {}))
                if not generated:
                    raise
                message = (str(error).strip() or type(error).__name__).splitlines()[0][:200]
                raise errors.GraphtapError(
                    f"signature '{source}' rejects the generated input(s) "
                    f"{', '.join(generated)} ({message}): give real ones", original_dir) from None
            try:
                got = tapped.run(path, signature, feed)
            except Exception as error:  # noqa: BLE001 (TensorFlow raises many kinds)
                status = "error: " + str(error).strip().splitlines()[0][:200]
                checks.append(Check(path, signature, "*", False, (), status))
                continue
            checks += _compare(path, signature, want, got, signature_taps)
        if runs > 1:
            latency[signature] = (original.median_seconds(source, feed, runs),
                                  tapped.median_seconds(signature, feed, runs))
    return Verification(tuple(checks), latency)


def _compare(path, signature, want, got, taps):
    checks = []
    originals_finite = all(np.all(np.isfinite(v)) for v in want.values() if v.dtype.kind == "f")
    for key, expected in sorted(want.items()):
        actual = got.get(key)
        if actual is None:
            checks.append(Check(path, signature, key, False, (), "missing"))
            continue
        status, diff = "match", 0.0
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            status = f"dtype/shape {actual.dtype}{actual.shape} != {expected.dtype}{expected.shape}"
        elif actual.dtype == object:  # tf.string: compared as bytes
            if actual.tolist() != expected.tolist():
                status = "diff"
        elif actual.tobytes() != expected.tobytes():
            status = "diff"
            diff = float(np.max(np.abs(actual.astype("float64") - expected.astype("float64"))))
        checks.append(Check(path, signature, key, False, actual.shape, status, diff))
    for key, tap in sorted(taps.items()):
        actual = got.get(key)
        if actual is None:
            checks.append(Check(path, signature, key, True, (), "missing"))
            continue
        status = "match"
        if _dtype_name(actual) != tap["dtype"]:
            status = f"dtype {actual.dtype.name} != manifest {tap['dtype']}"
        elif not _compatible(actual.shape, tap["shape"]):
            status = f"shape {actual.shape} != manifest {tap['shape']}"
        elif originals_finite and actual.dtype.kind == "f" and not np.all(np.isfinite(actual)):
            status = "not finite"
        checks.append(Check(path, signature, key, True, actual.shape, status))
    for key in sorted(set(got) - set(want) - set(taps)):
        checks.append(Check(path, signature, key, False, got[key].shape, "not in the manifest"))
    return checks


def _dtype_name(value):
    """The TensorFlow name of an output's dtype: tf.string comes back as numpy objects."""
    if value.dtype == object and all(isinstance(v, bytes) for v in value.flat):
        return "string"
    return value.dtype.name


def _compatible(shape, manifest_shape):
    if manifest_shape is None:
        return True
    return len(shape) == len(manifest_shape) and all(
        want < 0 or want == have for have, want in zip(shape, manifest_shape))


def _manifest_taps(tapped_dir):
    taps = manifest.read(tapped_dir)
    if taps is None:
        raise errors.NotAModel("no graphtap manifest: not a tapped model",
                               os.path.join(tapped_dir, manifest.PATH))
    return taps


def _inputs(signature_def, given, rng):
    """The given inputs of a signature, and seeded random ones (a batch of 2) for the rest."""
    import tensorflow as tf

    specs = {name: (tf.dtypes.as_dtype(info.dtype),
                    [None if d.size < 0 else d.size for d in info.tensor_shape.dim])
             for name, info in signature_def.inputs.items()}
    feed = runtime.random_inputs({n: s for n, s in specs.items() if n not in given}, 2, rng,
                                 inner=2)
    feed.update({name: np.asarray(given[name], dtype=specs[name][0].as_numpy_dtype)
                 for name in specs if name in given})
    return feed


class _Loaded:
    """One SavedModel, loaded on both paths."""

    def __init__(self, tf, model_dir, tags):
        self.tf = tf
        self.model = runtime.saved_model(model_dir, tags)
        self.session, meta_graph = runtime.session(model_dir, tags)
        self.signature_defs = dict(meta_graph.signature_def)

    def run(self, path, signature, feed):
        if path == "tf2":
            function = self.model.signatures[signature]
            outputs = function(**{k: self.tf.constant(v) for k, v in feed.items()})
            return {key: value.numpy() for key, value in outputs.items()}
        signature_def = self.signature_defs[signature]
        keys = sorted(signature_def.outputs)
        values = self.session.run(
            [signature_def.outputs[k].name for k in keys],
            {signature_def.inputs[k].name: v for k, v in feed.items()},
        )
        return dict(zip(keys, values))

    def median_seconds(self, signature, feed, runs):
        function = self.model.signatures[signature]
        tensors = {k: self.tf.constant(v) for k, v in feed.items()}
        function(**tensors)  # warm-up: tracing and Grappler happen on the first call
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            function(**tensors)
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

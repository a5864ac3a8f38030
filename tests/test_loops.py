"""--loop: taps inside While bodies. Keras LSTM/GRU gates at every timestep against numpy
recomputed from the layers' weights, a tf.while_loop module, both load paths."""

import numpy as np
import pytest
from loaders import assert_bit_identical, assert_close, run_tf1, run_tf2

import graphtap
from graphtap import errors

SEQUENCES = np.random.default_rng(31).standard_normal((3, 5, 3)).astype("float32")
VECTORS = np.random.default_rng(32).standard_normal((4, 3)).astype("float32")
GATES = {"lstm": ["Sigmoid", "Sigmoid_1", "Sigmoid_2", "Tanh", "Tanh_1"],
         "gru": ["Sigmoid", "Sigmoid_1", "Tanh"]}


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def numpy_gates(cell, sequences):
    """{gate node name: [timesteps, batch, units]} recomputed from the cell's weights, in
    Keras 3's order: LSTM i, f, g, o and tanh(c) (Sigmoid, Sigmoid_1, Tanh, Sigmoid_2,
    Tanh_1); GRU (reset_after) z, r, candidate (Sigmoid, Sigmoid_1, Tanh)."""
    kernel, recurrent, bias = (w.numpy().astype(np.float64)
                               for w in (cell.kernel, cell.recurrent_kernel, cell.bias))
    units = recurrent.shape[0]
    h = np.zeros((len(sequences), units))
    c = np.zeros_like(h)
    steps = {}
    for x in sequences.transpose(1, 0, 2).astype(np.float64):
        if bias.ndim == 1:  # LSTM
            z = x @ kernel + h @ recurrent + bias
            i, f, g, o = np.split(z, 4, axis=1)
            i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
            c = f * c + i * g
            values = {"Sigmoid": i, "Sigmoid_1": f, "Tanh": g, "Sigmoid_2": o, "Tanh_1": np.tanh(c)}
            h = o * np.tanh(c)
        else:  # GRU, reset_after: bias[0] on the input, bias[1] on the recurrent product
            x_z, x_r, x_h = np.split(x @ kernel + bias[0], 3, axis=1)
            r_z, r_r, r_h = np.split(h @ recurrent + bias[1], 3, axis=1)
            z, r = _sigmoid(x_z + r_z), _sigmoid(x_r + r_r)
            candidate = np.tanh(x_h + r * r_h)
            values = {"Sigmoid": z, "Sigmoid_1": r, "Tanh": candidate}
            h = z * h + (1 - z) * candidate
        for name, value in values.items():
            steps.setdefault(name, []).append(value)
    return {name: np.stack(values) for name, values in steps.items()}


@pytest.mark.parametrize("fixture", ["keras_lstm", "keras_lstm_sequences", "keras_gru",
                                     "keras_gru_sequences"])
@pytest.mark.parametrize("mode", ["stack", "last"])
@pytest.mark.compat("Taps inside While bodies (--loop), TF2 load and TF1 Session")
def test_rnn_gates_at_every_step_equal_numpy(fixture, mode, request, tmp_path):
    path, model = request.getfixturevalue(fixture)
    layer = "lstm" if "lstm" in fixture else "gru"
    gates = GATES[layer]
    out = str(tmp_path / "tapped")
    pattern = f"rnn_1/{layer}_1/while/{layer}_cell_1/({'|'.join(gates)})"
    report = graphtap.tap(path, out, names=[pattern], loop=mode)
    assert sorted(r.node.rsplit("/", 1)[1] for r in report.taps) == sorted(gates)
    assert {r.loop for r in report.taps} == {mode}
    expected = numpy_gates(model.get_layer(layer).cell, SEQUENCES)
    original = run_tf2(path, "serving_default", {"sequence": SEQUENCES})
    for run in (run_tf2, run_tf1):
        outputs = run(out, "serving_default", {"sequence": SEQUENCES})
        assert_bit_identical(outputs, original, ["output_0"])
        for record in report.taps:
            gate = expected[record.node.rsplit("/", 1)[1]]
            want = gate if mode == "stack" else gate[-1]
            assert outputs[record.key].shape == want.shape  # stack: all 5 steps, in the loop
            assert_close(outputs[record.key], want, rtol=1e-5, atol=1e-6)


@pytest.mark.compat("Taps inside While bodies (--loop), TF2 load and TF1 Session")
def test_while_loop_module_stack_and_last_equal_numpy(while_module, tmp_path):
    path, _ = while_module
    values, steps = VECTORS.astype(np.float64), []
    for i in range(4):
        values = np.maximum(values * 0.5 + i - 1.0, 0)
        steps.append(values)
    original = run_tf2(path, "serving_default", {"x": VECTORS})
    for mode, expected in (("stack", np.stack(steps)), ("last", steps[-1])):
        out = str(tmp_path / mode)
        report = graphtap.tap(path, out, names=["while/step=step"], loop=mode)
        declared = [-1, -1, 3] if mode == "stack" else None  # last: a scalar before step 1
        assert [r.shape for r in report.taps] == [declared]
        for run in (run_tf2, run_tf1):
            outputs = run(out, "serving_default", {"x": VECTORS})
            assert_bit_identical(outputs, original, ["y"])
            assert_close(outputs["step"], expected)
        result = graphtap.verify(path, out)
        assert result.ok, [c for c in result.checks if c.status != "match"]


def test_without_loop_a_body_op_is_refused_with_the_hint(keras_lstm, tmp_path):
    path, _ = keras_lstm
    with pytest.raises(errors.NotTappable, match=r"tap with loop 'stack' or 'last'"):
        graphtap.tap(path, str(tmp_path / "out"), names=[".*/while/lstm_cell_1/Sigmoid"])


def test_a_loop_inside_a_loop_is_refused(while_module, tmp_path):
    path, _ = while_module
    with pytest.raises(errors.NotTappable, match="inside nested control flow"):
        graphtap.tap(path, str(tmp_path / "out"), names=["while/while/wave"],
                     signatures="nested", loop="stack")
    assert not (tmp_path / "out").exists()


def test_cli_loop_flag(while_module, tmp_path):
    import subprocess
    import sys

    from conftest import child_env

    path, _ = while_module
    done = subprocess.run([sys.executable, "-m", "graphtap", "tap", f"--input={path}",
                           f"--output={tmp_path / 'out'}", "--tap_name=while/step", "--loop=stack"],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "(?, ?, 3)" in done.stdout
    outputs = run_tf2(str(tmp_path / "out"), "serving_default", {"x": VECTORS})
    assert outputs["while_step"].shape == (4, 4, 3)


@pytest.mark.compat("Taps inside If/Case branches, TF2 load and TF1 Session")
def test_branch_taps_hold_the_taken_branch_or_nothing(branchy, tmp_path):
    """An op inside an If/Case branch: its value when that branch ran, else an empty tensor."""
    path, _ = branchy
    out = str(tmp_path / "tapped")
    report = graphtap.tap(path, out, names=["cond/mul=doubled", "case/indexed_case/mul=squared"])
    assert [r.shape for r in report.taps] == [None, None]  # empty when the other branch runs
    x = np.abs(VECTORS[:1, :3]).repeat(2, axis=1)[:, :4]
    for sign in (1, -1):
        for k in range(3):
            inputs = {"x": sign * x, "k": np.int32(k)}
            original = run_tf2(path, "serving_default", inputs)
            for run in (run_tf2, run_tf1):
                outputs = run(out, "serving_default", inputs)
                assert_bit_identical(outputs, original, ["output_0"])
                doubled = inputs["x"] * 2 if sign > 0 else np.zeros((0,), "float32")
                squared = inputs["x"] ** 2 if k == 1 else np.zeros((0,), "float32")
                assert_close(outputs["doubled"], doubled)
                assert_close(outputs["squared"], squared)


def test_taps_in_two_branches_of_one_node_are_refused(branchy, tmp_path):
    path, _ = branchy
    with pytest.raises(errors.NotTappable, match="two branches of an If/Case"):
        graphtap.tap(path, str(tmp_path / "out"), names=["cond/mul", "cond/sub"])

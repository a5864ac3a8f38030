"""Unit layer: the policies of the rewrite, with no TensorFlow runtime (`pytest -m unit`)."""

import collections
import json

import pytest

from graphtap import cli, errors
from graphtap.rewrite import manifest, signatures
from graphtap.rewrite.keys import assign_keys, sanitize, unique_name
from graphtap.options import TapOptions
from graphtap.rewrite.selectors import (NameSelector, OpSelector, RegexSet, compile_regex,
                                        parse_name_selectors, select)

pytestmark = pytest.mark.unit

Candidate = collections.namedtuple("Candidate", "name op tensor_key blocked calls")


def candidate(name, op="Relu", blocked=None):
    return Candidate(name, op, (name,), blocked, ())


@pytest.mark.parametrize("name, key", [("a/b:1", "a_b_1"), ("x", "x"), ("é-1.2", "__1_2")])
def test_default_keys_hold_only_word_characters(name, key):
    assert sanitize(name) == key


def test_unique_names_count_up():
    taken = {"a", "a_1"}
    assert unique_name("a", taken) == "a_2" and unique_name("b", taken) == "b"


def test_default_keys_avoid_outputs_and_each_other():
    chosen = assign_keys([(candidate("d/Relu"), None), (candidate("d_Relu"), None)],
                         {"d_Relu"})
    assert sorted(key for _, key in chosen) == ["d_Relu_1", "d_Relu_2"]


@pytest.mark.parametrize("key, message", [("bad key", "only letters"),
                                          ("output_0", "already an output")])
def test_chosen_keys_must_be_valid_and_new(key, message):
    with pytest.raises(errors.BadKey, match=message):
        assign_keys([(candidate("x"), key)], {"output_0"})


@pytest.mark.parametrize("given, parsed", [
    ("a.*", [("a.*", None)]),
    (["a=k", "b"], [("a", "k"), ("b", None)]),
    ({"a": "k"}, [("a", "k")]),
    ([("a", "k")], [("a", "k")]),
    (None, []),
])
def test_name_selectors_parse(given, parsed):
    assert parse_name_selectors(given) == parsed


@pytest.mark.parametrize("pattern, name, matches", [
    ("a/.*", "a/b", True), ("a", "a/b", False), ("b", "a/b", False), ("a/b:1", "a/b:1", True),
    (".*Relu", "x/Relu", True), ("x|y", "y", True),
])
def test_regexes_full_match(pattern, name, matches):
    assert bool(compile_regex(pattern).fullmatch(name)) == matches
    assert RegexSet([pattern, "unrelated"]).any_matches(name) == matches


@pytest.mark.parametrize("pattern", ["(?=a)a", r"(a)\1", "[a"])
def test_regexes_re2_lacks_are_refused_naming_them(pattern):
    with pytest.raises(errors.NoMatch) as caught:
        compile_regex(pattern)
    assert caught.value.where == pattern


def test_a_backtracking_regex_matches_at_once():
    name = "a" * 5000 + "!"
    assert not compile_regex("(a+)+Z").fullmatch(name)


def test_select_is_a_union_less_the_excluded():
    found = [candidate("a/Relu"), candidate("b/Relu"), candidate("c/Softmax", "Softmax")]
    chosen = select(found, [NameSelector([("a/.*", None)]), OpSelector(["Softmax"])],
                    exclude=["c/.*"])
    assert [c.name for c, _ in chosen] == ["a/Relu"]


def test_select_names_the_closest_when_nothing_matches():
    with pytest.raises(errors.NoMatch, match="closest: a/Relu"):
        select([candidate("a/Relu")], [NameSelector([("a/Rel", None)])])


def test_select_refuses_a_blocked_tensor_with_its_reason():
    with pytest.raises(errors.NotTappable, match="inside a loop"):
        select([candidate("w/x", blocked="inside a loop")], [NameSelector([("w/x", None)])])


def test_tap_options_are_normalized():
    options = TapOptions(names="a=k", ops="Relu", signatures=["s", "t", "s"])
    assert options.names == (("a", "k"),) and options.ops == ("Relu",)
    assert options.signatures == ("s", "t")
    assert TapOptions.of(options, top_k=3).top_k == 3 and options.top_k == 20


@pytest.mark.parametrize("changes, error, message", [
    ({"mode": "replace"}, errors.BadArgument, "mode must be"),
    ({"loop": "all"}, errors.BadArgument, "loop must be"),
    ({"top_k": 0}, errors.BadArgument, "top_k"),
    ({"tapped_signature": "x"}, errors.BadArgument, "only in mode 'add'"),
    ({"mode": "add", "tapped_signature": "__saved_model_init_op"}, errors.BadKey, "reserved"),
    ({"nmaes": ["x"]}, errors.BadArgument, "no tap option 'nmaes'"),
])
def test_tap_options_refuse_what_tap_does_not_take(changes, error, message):
    with pytest.raises(error, match=message):
        TapOptions.of(**changes)


@pytest.mark.parametrize("given, tags", [("serve", ["serve"]), ("serve,gpu", ["gpu", "serve"]),
                                         (["gpu", "serve", ""], ["gpu", "serve"]), ("", [])])
def test_tag_sets(given, tags):
    assert signatures.tags(given) == tags


@pytest.mark.parametrize("keys, requested, chosen", [
    (["serving_default", "serve"], None, ["serving_default"]),
    (["only", "__saved_model_init_op"], None, ["only"]),
    (["a", "b"], ["b", "a", "b"], ["b", "a"]),
    (["a", "b"], "a", ["a"]),
])
def test_signature_choice(keys, requested, chosen):
    assert signatures.choose_signatures(keys, requested, "m") == chosen


@pytest.mark.parametrize("keys, requested, message", [
    (["a", "b"], None, "choose a signature: a, b"),
    (["a"], "z", "no signature 'z'; it has a"),
    (["a"], "__saved_model_init_op", "no signature"),
])
def test_signature_choice_errors(keys, requested, message):
    with pytest.raises(errors.UnknownSignature, match=message):
        signatures.choose_signatures(keys, requested, "m")


RECORD = {"signature": "s", "key": "k", "dtype": "float32", "shape": [-1, 2]}


def test_manifest_round_trip(tmp_path):
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / manifest.PATH).write_bytes(manifest.encode([RECORD, dict(RECORD, key="j")]))
    assert [t["key"] for t in manifest.read(str(tmp_path))] == ["k", "j"]
    assert manifest.read(str(tmp_path / "nothing")) is None


@pytest.mark.parametrize("text", ['{"taps": "abc"}', "null", "[]", '{"taps": [1]}',
                                  '{"taps": [{"key": 3}]}', "[" * 100000, "{"])
def test_malformed_manifests_are_corrupt_models(tmp_path, text):
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / manifest.PATH).write_text(text)
    with pytest.raises(errors.CorruptModel) as caught:
        manifest.read(str(tmp_path))
    assert caught.value.where == str(tmp_path / manifest.PATH)


@pytest.mark.parametrize("text, line", [("a\nb", "a\\nb"), ("\x1b[2J", "\\x1b[2J"),
                                        ("café", "café"), ("x" * 600, "x" * 499 + "\u2026")])
def test_cli_error_lines_are_one_printable_line(text, line):
    assert cli.one_line(text) == line


def test_cli_adds_the_flag_that_answers_a_library_error():
    error = cli._with_flag_hint(errors.OutputExists("output exists", "out"))
    assert str(error) == "output exists; pass --overwrite to replace it (out)"
    error = cli._with_flag_hint(errors.UnknownSignature("choose a signature: a, b", "m"))
    assert error.what == "choose a signature with --signature_def: a, b"
    error = cli._with_flag_hint(errors.NotTappable(
        "inside 'body'; tap with loop 'stack' or 'last' for its value, or leave it out with "
        "exclude"))
    assert error.what == ("inside 'body'; pass --loop=stack|last for its value, or leave it "
                          "out with --exclude")
    untouched = errors.NoMatch("nothing", "x")
    assert cli._with_flag_hint(untouched) is untouched


@pytest.mark.parametrize("verb, has, lacks", [
    ("tap", ["tap_name", "link_variables", "output"], ["tfrecord", "filter"]),
    ("list", ["filter", "format"], ["output", "tap_name"]),
    ("dump", ["tfrecord", "save", "custom_ops"], ["tap_name", "original"]),
    ("verify", ["original", "tapped", "inputs_npz"], ["out"]),
    ("profile", ["logdir", "runs", "top_k"], ["tap_name"]),
])
def test_each_verb_has_its_own_flags(verb, has, lacks):
    defined = set(cli.verb_flags(verb))
    assert set(has) <= defined and not set(lacks) & defined


def test_cli_parses_a_verb_and_refuses_strays(capsys):
    verb, parsed = cli._parse(["graphtap", "tap", "--input=a", "--output=b", "--tap_op=Relu"])
    assert verb == "tap" and parsed.tap_op == ["Relu"]
    for argv in (["graphtap", "frob"], ["graphtap", "tap", "stray"],
                 ["graphtap", "tap", "--tfrecord=x"]):
        with pytest.raises(SystemExit) as caught:
            cli._parse(argv)
        assert caught.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 3


def test_tap_flags_give_tap_options():
    from absl import flags

    from graphtap.flags import define_tap_flags

    values = flags.FlagValues()
    holder = define_tap_flags(prefix="gt_", flag_values=values)
    values(["prog", "--gt_tap_name=a=k", "--gt_mode=add", "--gt_overwrite"])
    options = holder.options()
    assert options.names == (("a", "k"),) and options.mode == "add" and options.overwrite
    assert json.dumps(options.ops) == "[]"

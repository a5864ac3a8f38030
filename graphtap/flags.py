"""The tap flags, defined once: for the `graphtap` command, and for any absl script.

    from absl import app, flags
    import graphtap
    from graphtap.flags import define_tap_flags

    flags.DEFINE_string("input", None, "...")   # the script's own flags
    TAP = define_tap_flags(prefix="graphtap_")  # --graphtap_tap_name, --graphtap_tap_op, ...

    def main(argv):
        graphtap.tap(FLAGS.input, FLAGS.output, TAP.options())
"""

from absl import flags

from graphtap.options import LOOP_MODES, MODES, TapOptions


class TapFlags:
    """The tap flags one call of define_tap_flags defined; `options()` reads them."""

    def __init__(self, prefix, flag_values):
        self._prefix = prefix
        self._flag_values = flag_values

    def value(self, name):
        """The parsed value of the flag `name` (without the prefix)."""
        return self._flag_values[self._prefix + name].value

    def options(self, **changes):
        """The TapOptions the parsed flags give, with `changes` over them."""
        value = self.value
        return TapOptions.of(
            names=value("tap_name"), ops=value("tap_op"), layers=value("tap_layer"),
            exclude=value("exclude"), profile=value("tap_profile"), top_k=value("top_k"),
            loop=value("loop"), signatures=value("signature_def"), mode=value("mode"),
            tapped_signature=value("tapped_signature"), tag_set=value("tag_set"),
            overwrite=value("overwrite"), link_variables=value("link_variables"), **changes)


def define_tap_flags(prefix="", flag_values=flags.FLAGS):
    """Defines the flags of every tap option, named `--{prefix}tap_name` and so on, in
    `flag_values`; returns the TapFlags that reads them once parsed."""
    p, fv = prefix, flag_values
    flags.DEFINE_multi_string(
        p + "tap_name", [], "Regex (RE2) full-matched against tensor names as `graphtap list` "
        "shows them (`node`, or `node:k` for output k > 0); `REGEX=KEY` chooses the output "
        "key. Repeatable.", flag_values=fv)
    flags.DEFINE_multi_string(p + "tap_op", [], "Op type whose every output is tapped. "
                              "Repeatable.", flag_values=fv)
    flags.DEFINE_multi_string(p + "tap_layer", [], "Keras layer name (as model.summary() "
                              "shows it) whose output is tapped, keyed by the layer's name. "
                              "Repeatable.", flag_values=fv)
    flags.DEFINE_multi_string(p + "exclude", [], "Regex; tensors whose names it full-matches "
                              "are not tapped (applied after the selectors). Repeatable.",
                              flag_values=fv)
    flags.DEFINE_string(p + "tap_profile", None, "A profiler log directory of this model: tap "
                        f"the --{p}top_k nodes that took most time (with --{p}tap_name: the "
                        "traced nodes it matches).", flag_values=fv)
    flags.DEFINE_integer(p + "top_k", 20, "How many of the most expensive nodes.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_enum(p + "loop", None, list(LOOP_MODES), "For tensors inside a While loop's "
                      "body: `stack` gives every iteration's value on a new leading axis, "
                      "`last` the last iteration's. Without it they are refused.",
                      flag_values=fv)
    flags.DEFINE_multi_string(p + "signature_def", None, "Signature to tap (default: "
                              "serving_default and the signatures that run its function, or "
                              "the only one). Repeatable.", flag_values=fv)
    flags.DEFINE_enum(p + "mode", "extend", list(MODES), "`extend` adds the taps to the "
                      "signature; `add` leaves it untouched and adds <signature>_tapped.",
                      flag_values=fv)
    flags.DEFINE_string(p + "tapped_signature", None, f"With --{p}mode=add: the name of the "
                        "new signature.", flag_values=fv)
    flags.DEFINE_string(p + "tag_set", "serve", "Tags of the meta graph to tap, "
                        "comma-separated.", flag_values=fv)
    flags.DEFINE_bool(p + "overwrite", False, "Replace an existing output that graphtap wrote.",
                      flag_values=fv)
    flags.DEFINE_bool(p + "link_variables", False, "Hard-link the variables into the output "
                      "instead of copying them. Safe only if neither model is ever written "
                      "to: TensorFlow rewrites variables.index in place, through every link.",
                      flag_values=fv)
    return TapFlags(prefix, flag_values)

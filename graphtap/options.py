"""TapOptions: every option of a tap, in one frozen record, checked where it is made."""

import dataclasses

from graphtap import errors
from graphtap.rewrite.selectors import parse_name_selectors
from graphtap.rewrite.signatures import INIT_OP_SIGNATURE

LOOP_MODES = ("stack", "last")
MODES = ("extend", "add")


@dataclasses.dataclass(frozen=True)
class TapOptions:
    """What to tap and how to write it. Sequences may be given as lists or one string;
    they are kept as tuples.

    names: regexes (RE2) full-matched against tensor names as `list_targets` shows them
      (`node`, or `node:k` for output k > 0); `pattern=key`, or a dict {pattern: key},
      chooses the key. Kept as (pattern, key or None) pairs.
    ops: op types; every output of every op of these types.
    layers: Keras layer names (`dense`, `conv2d_1`); each layer's output tensor, keyed by
      the layer's name.
    exclude: regexes; tensors whose names they full-match are not tapped.
    profile: a profiler log directory of this model: the `top_k` nodes that took most
      time; with `names`, every traced node whose name they match instead.
    loop: for tensors inside a While loop's body, "stack" (every iteration's value, on a
      new leading axis) or "last" (the last iteration's); without it they are refused.
    signatures: signature keys to tap; default `serving_default` (and the signatures that
      run its function), or the only one.
    mode: "extend" adds the taps to the signatures; "add" leaves them untouched and adds
      `<signature>_tapped` (or `tapped_signature`) with their outputs plus the taps.
    tag_set: tags of the meta graph to tap, comma-separated.
    overwrite: replace an existing output graphtap wrote.
    link_variables: hard-link the variables instead of copying them, where the filesystem
      allows. Safe only if neither model is ever written to: TensorFlow rewrites
      `variables.index` in place, through every link.
    """

    names: tuple = ()
    ops: tuple = ()
    layers: tuple = ()
    exclude: tuple = ()
    profile: str = None
    top_k: int = 20
    loop: str = None
    signatures: tuple = None
    mode: str = "extend"
    tapped_signature: str = None
    tag_set: str = "serve"
    overwrite: bool = False
    link_variables: bool = False

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(parse_name_selectors(self.names)))
        for field in ("ops", "layers", "exclude"):
            object.__setattr__(self, field, _strings(getattr(self, field)))
        if self.signatures is not None:  # one each, in the order given
            signatures = tuple(dict.fromkeys(_strings(self.signatures)))
            object.__setattr__(self, "signatures", signatures)
        if self.mode not in MODES:
            raise errors.BadArgument(f"mode must be 'extend' or 'add', not '{self.mode}'")
        if self.loop not in (None, *LOOP_MODES):
            raise errors.BadArgument(f"loop must be 'stack' or 'last', not '{self.loop}'")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise errors.BadArgument(f"top_k must be a positive integer, not {self.top_k!r}")
        if self.tapped_signature is not None and self.mode != "add":
            raise errors.BadArgument("a tapped signature is named only in mode 'add'",
                                     self.tapped_signature)
        if self.tapped_signature == INIT_OP_SIGNATURE:
            raise errors.BadKey("reserved signature name: TensorFlow runs it when loading, to "
                                "initialize the model", self.tapped_signature)

    @classmethod
    def of(cls, options=None, **changes):
        """`options` (a TapOptions, or None for the defaults) with `changes`; a name that
        is no option is a BadArgument."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise errors.BadArgument(f"no tap option {', '.join(map(repr, unknown))}; the "
                                     f"options are those of graphtap.TapOptions")
        return dataclasses.replace(options or cls(), **changes)


def _strings(value):
    """A string or a sequence of them, as a tuple."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)

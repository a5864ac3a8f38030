"""Selectors -> the candidates to tap, as a union less exclusions.

A selector is one way of choosing tensors, behind one small interface (Selector): names,
op types, Keras layers and profiler traces are one class each, and `select` makes the
union of whatever they pick. A new way of choosing is one new class.

Selector regexes are RE2's (google-re2), never Python's: RE2 matches in time linear in the
name, whatever the regex, where a backtracking engine can run for ever on a regex like
`([a-z]+)+Z`. The price is RE2's syntax: no backreferences, no lookaround. Several regexes
are compiled into one automaton (RE2::Set), which reads a name once however many there are.
"""

import dataclasses
import difflib
import functools
import re

import re2

from graphtap import errors
from graphtap.rewrite import aliases
from graphtap.rewrite.keys import KEY_CHARS, unique_name
from graphtap.rewrite.layers import LayerMap
from graphtap.rewrite.traces import match_trace, trace_files

_RENAME_RE = re.compile(f"^(?P<pattern>.+)=(?P<key>{KEY_CHARS}+)$")

# RE2 bounds each automaton's memory; its default, 8 MiB, holds about a thousand selectors.
_MAX_MEM = 256 << 20


def _options():
    options = re2.Options()
    options.log_errors = False  # the errors are raised; RE2 would also print them
    options.max_mem = _MAX_MEM
    return options


_OPTIONS = _options()


def parse_name_selectors(names):
    """`names` as the API takes it -> list of (pattern, key or None).

    A list holds patterns, each optionally `pattern=key` to choose the tap's key, or
    (pattern, key) pairs; a dict maps patterns to keys (None: the default key).
    """
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    if isinstance(names, dict):
        return list(names.items())
    parsed = []
    for selector in names:
        if isinstance(selector, tuple):
            parsed.append(selector)
            continue
        match = _RENAME_RE.match(selector)
        parsed.append((match["pattern"], match["key"]) if match else (selector, None))
    return parsed


class Prefilter:
    """Which nodes selectors may want, judged from a node's name, op and output count
    alone, so that the index resolves the outputs of those nodes only."""

    def __init__(self, names=(), ops=()):
        self.ops = frozenset(ops)
        self.regexes = RegexSet([pattern for pattern, _ in names])

    @classmethod
    def of(cls, selectors):
        """The Prefilter of `selectors`: the union of their hints; None (every tensor is
        wanted) if one of them gives none."""
        names, ops = [], []
        for selector in selectors:
            hint = selector.prefilter()
            if hint is None:
                return None
            names += hint.names
            ops += hint.ops
        return cls(names, ops)

    @property
    def name_matches(self):
        """name -> whether a name regex full-matches it (as the node's output 0)."""
        return self.regexes.any_matches

    def output_name_matches(self, name, output_count):
        """Whether a name regex full-matches `name:k` for some output 0 < k < output_count."""
        matches = self.regexes.any_matches
        return any(matches(f"{name}:{k}") for k in range(1, output_count))


class RegexSet:
    """Regexes full-matched against names all at once, in one automaton."""

    def __init__(self, patterns):
        self.patterns = tuple(patterns)
        self._set = _compiled_set(self.patterns) if self.patterns else None

    def __len__(self):
        return len(self.patterns)

    def matching(self, name):
        """Positions in `patterns` of the regexes that full-match `name`."""
        return (self._set.Match(name) or ()) if self._set else ()

    def any_matches(self, name):
        """Whether some regex full-matches `name`."""
        return self._set is not None and self._set.Match(name) is not None

    def matched(self, candidates):
        """[[candidate]] per pattern: the candidates whose names it full-matches, in order."""
        found = [[] for _ in self.patterns]
        for candidate in candidates:
            for position in self.matching(candidate.name):
                found[position].append(candidate)
        return found


@functools.lru_cache(maxsize=4)  # the prefilter's regexes are select's: compile them once
def _compiled_set(patterns):
    """The re2.Set full-matching `patterns` (a tuple); a regex RE2 refuses is a NoMatch
    naming it."""
    regex_set = re2.Set.FullMatchSet(_OPTIONS)
    for pattern in patterns:
        try:
            regex_set.Add(pattern)
        except re2.error:  # which says nothing but the pattern: let RE2 say what is wrong
            compile_regex(pattern)
            raise errors.NoMatch("RE2 cannot parse this regex", pattern) from None
    try:
        regex_set.Compile()
    except re2.error:
        for pattern in patterns:
            compile_regex(pattern)  # raises for one too large on its own
        raise errors.NoMatch(f"{len(patterns)} selector regexes are too large to match "
                             f"together (RE2's automaton exceeds {_MAX_MEM >> 20} MiB)") from None
    return regex_set


@dataclasses.dataclass(frozen=True)
class Hint:
    """What a selector looks for, judged from a node's name and op alone (see Prefilter):
    name selectors ((pattern, key or None) pairs) and op types."""

    names: tuple = ()
    ops: tuple = ()


@dataclasses.dataclass
class SelectionContext:
    """What a selector may read besides the candidates, for one signature.

    index: the GraphIndex the candidates come from.
    signature: the signature's key (None for a GraphDef).
    signature_def: its SignatureDef (for a GraphDef, one with no outputs).
    variable_names: the model's variable names (`dense/kernel`), for Keras layers.
    already_outputs: [(signature, layer, output key)] of picks dropped because their
      tensor already is an output of the signature; selectors append to it.
    """

    index: object = None
    signature: str = None
    signature_def: object = None
    variable_names: tuple = ()
    already_outputs: list = dataclasses.field(default_factory=list)


class Selector:
    """One way of choosing tensors to tap; `select` makes the union of several."""

    def prefilter(self):
        """A Hint of the nodes this selector may pick, or None when it must see every
        tensor (the default)."""
        return None

    def pick(self, candidates, context):
        """Yields (candidate, key or None) for the candidates it chooses (a key names the
        tap's output); raises NoMatch when it chooses none."""
        raise NotImplementedError


class NameSelector(Selector):
    """Name regexes (RE2), full-matched against candidate names: (pattern, key or None)."""

    def __init__(self, names):
        self.names = tuple(names)

    def prefilter(self):
        return Hint(names=self.names)

    def pick(self, candidates, context=None):
        regexes = RegexSet([pattern for pattern, _ in self.names])
        for (pattern, key), matched in zip(self.names, regexes.matched(candidates)):
            if not matched:
                raise errors.NoMatch(_no_match_message("name", pattern,
                                                       {c.name for c in candidates}))
            if key is not None and len({c.tensor_key for c in matched}) > 1:
                raise errors.BadKey(
                    f"key '{key}' given to a selector that matches {len(matched)} tensors "
                    f"({', '.join(sorted({c.name for c in matched})[:3])}, ...)",
                    pattern,
                )
            for candidate in matched:
                yield candidate, key


class OpSelector(Selector):
    """Op types: every output of every node of these types."""

    def __init__(self, ops):
        self.ops = tuple(ops)

    def prefilter(self):
        return Hint(ops=self.ops)

    def pick(self, candidates, context=None):
        for op in self.ops:
            matched = [c for c in candidates if c.op == op]
            if not matched:
                raise errors.NoMatch(_no_match_message("op", op, {c.op for c in candidates}))
            for candidate in matched:
                yield candidate, None


class LayerSelector(Selector):
    """Keras layers by name: each layer's output, keyed by the layer's name (see
    layers.LayerMap). An output that already is an output of the signature is not picked
    but recorded in the context's already_outputs."""

    def __init__(self, layers):
        self.layers = tuple(layers)

    def pick(self, candidates, context):
        layer_map = LayerMap(context.index, candidates, context.variable_names)
        picked = layer_map.select(candidates, self.layers)
        return _new_outputs(context, picked)


class ProfileSelector(Selector):
    """The nodes a profiler trace spent most time in: the `top_k` costliest, or with name
    selectors, every traced node they match (the name selectors are then this selector's,
    and match traced nodes only)."""

    def __init__(self, trace_files, names=(), top_k=20):
        self.trace_files = tuple(trace_files)
        self.names = tuple(names)
        self.top_k = top_k

    def pick(self, candidates, context):
        traced = match_trace(candidates, self.trace_files)
        if not traced.times:
            raise errors.NoMatch(
                f"none of the profile's {traced.op_events} op events maps to a node of "
                f"signature '{context.signature}': was the profile taken of this model?",
                self.trace_files[0])
        tappable = [t.candidate for t in traced.times if not t.candidate.blocked]
        if not self.names:
            return [(candidate, None) for candidate in tappable[:self.top_k]]
        picked = []
        regexes = RegexSet([pattern for pattern, _ in self.names])
        for (pattern, key), matched in zip(self.names, regexes.matched(tappable)):
            if not matched:
                raise errors.NoMatch(f"name selector '{pattern}' matches no traced node",
                                     self.trace_files[0])
            picked += [(c, key) for c in matched]
        return picked


def selectors_from(options):
    """The selectors a TapOptions asks for, in the order their picks merge: Keras layers,
    a profile (which takes the name selectors, if any), names, op types. Reads where the
    profile's trace files are."""
    found = []
    if options.layers:
        found.append(LayerSelector(options.layers))
    names = options.names
    if options.profile:
        found.append(ProfileSelector(trace_files(options.profile), names, options.top_k))
        names = ()
    if names:
        found.append(NameSelector(names))
    if options.ops:
        found.append(OpSelector(options.ops))
    return found


def select(candidates, selectors, exclude=(), context=None):
    """Returns [(candidate, key or None)] in candidate order: the union of what the
    `selectors` pick, less the tensors whose names an `exclude` regex full-matches.
    Raises when a selector matches nothing or a selected tensor cannot be tapped; returns
    [] when nothing is picked only because every pick already is an output (see
    SelectionContext.already_outputs)."""
    context = context or SelectionContext()
    chosen = {}
    for selector in selectors:
        for candidate, key in selector.pick(candidates, context):
            chosen[candidate] = _merge_key(chosen.get(candidate), key, candidate)
    if not chosen:
        if context.already_outputs:
            return []  # every selected layer's output already is an output
        raise errors.NoMatch("no selector given: give names, ops, layers or a profile")
    excluded = RegexSet(exclude)
    chosen = {c: k for c, k in chosen.items() if not excluded.any_matches(c.name)}
    if not chosen:
        raise errors.NoMatch("every selected tensor is excluded")
    for candidate in chosen:
        if candidate.blocked:
            raise errors.NotTappable(
                f"{candidate.op} node '{candidate.name}' is {candidate.blocked}"
            )
    return [(c, chosen[c]) for c in candidates if c in chosen]


def _new_outputs(context, picked):
    """The picks ([(candidate, key)]) whose tensor is not already an output of the
    signature; the others are added to the context's already_outputs as (signature,
    layer, key). A key that is an output's key but names another tensor gets a suffix."""
    if not picked:
        return picked
    outputs = aliases.output_tensors(context.index, context.signature_def)
    taken = set(context.signature_def.outputs)
    kept = []
    for candidate, key in picked:
        output_key = outputs.get(aliases.candidate_ref(candidate))
        if output_key is not None:
            context.already_outputs.append((context.signature,
                                            candidate.layer or key or candidate.name,
                                            output_key))
            continue
        if key is not None and key in taken:
            key = unique_name(key, taken)
        kept.append((candidate, key))
    return kept


def compile_regex(pattern):
    """A selector's regex, compiled by RE2 (see the module doc: `fullmatch` and `search`
    as in Python's re); one RE2 refuses is a NoMatch naming it."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as error:
        reason = error.args[0].decode("utf-8", "replace") if error.args else "refused"
        raise errors.NoMatch(f"invalid regex: {reason} (selectors are RE2 regexes, which "
                             "have no backreferences or lookaround)", pattern) from None


def _merge_key(old, new, candidate):
    if old is not None and new is not None and old != new:
        raise errors.BadKey(f"two keys given for one tensor: '{old}' and '{new}'", candidate.name)
    return new if new is not None else old


def _no_match_message(kind, selector, known):
    literal = re.sub(r"[\\^$.*+?()\[\]{}|]", "", selector)  # compare names with the regex's text
    close = difflib.get_close_matches(literal, sorted(known), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"{kind} selector '{selector}' matches no tappable tensor{hint}"

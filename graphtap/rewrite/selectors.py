"""Selectors -> the candidates to tap: name regexes and op types, as a union.

Selector regexes are RE2's (google-re2), never Python's: RE2 matches in time linear in the
name, whatever the regex, where a backtracking engine can run for ever on a regex like
`([a-z]+)+Z`. The price is RE2's syntax: no backreferences, no lookaround. Several regexes
are compiled into one automaton (RE2::Set), which reads a name once however many there are.
"""

import difflib
import functools
import re

import re2

from graphtap import errors
from graphtap.rewrite.keys import KEY_CHARS

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


def select(candidates, names=(), ops=(), exclude=(), picked=()):
    """Returns [(candidate, key or None)] in candidate order: the union of what `names`
    and `ops` select and of `picked` ([(candidate, key or None)] that other selectors,
    Keras layers or a profile, chose), less the tensors whose names an `exclude` regex
    full-matches.
    Raises when a selector matches nothing or a selected tensor cannot be tapped."""
    if not names and not ops and not picked:
        raise errors.NoMatch("no selector given: pass --tap_name, --tap_op, --tap_layer or "
                             "--tap_profile")
    chosen = {}
    for candidate, key in picked:
        chosen[candidate] = _merge_key(chosen.get(candidate), key, candidate)
    name_regexes = RegexSet([pattern for pattern, _ in names])
    for (pattern, key), matched in zip(names, name_regexes.matched(candidates)):
        if not matched:
            raise errors.NoMatch(_no_match_message("name", pattern, {c.name for c in candidates}))
        if key is not None and len({c.tensor_key for c in matched}) > 1:
            raise errors.BadKey(
                f"key '{key}' given to a selector that matches {len(matched)} tensors "
                f"({', '.join(sorted({c.name for c in matched})[:3])}, ...)",
                pattern,
            )
        for candidate in matched:
            chosen[candidate] = _merge_key(chosen.get(candidate), key, candidate)
    for op in ops:
        matched = [c for c in candidates if c.op == op]
        if not matched:
            raise errors.NoMatch(_no_match_message("op", op, {c.op for c in candidates}))
        for candidate in matched:
            chosen.setdefault(candidate, None)
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

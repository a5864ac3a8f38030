"""Selectors -> the candidates to tap: name regexes and op types, as a union."""

import difflib
import re

from graphtap import errors
from graphtap.keys import KEY_CHARS

_RENAME_RE = re.compile(f"^(?P<pattern>.+)=(?P<key>{KEY_CHARS}+)$")


def parse_name_selectors(names):
    """`names` as the API takes it -> list of (pattern, key or None).

    A list holds patterns, each optionally `pattern=key` to choose the tap's key; a dict
    maps patterns to keys (None: the default key).
    """
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    if isinstance(names, dict):
        return list(names.items())
    parsed = []
    for selector in names:
        match = _RENAME_RE.match(selector)
        parsed.append((match["pattern"], match["key"]) if match else (selector, None))
    return parsed


class Prefilter:
    """Which nodes selectors may want, judged from a node's name, op and output count
    alone, so that the index resolves the outputs of those nodes only."""

    def __init__(self, names=(), ops=()):
        self.ops = frozenset(ops)
        self.regexes = [compile_regex(pattern) for pattern, _ in names]

    @property
    def name_matches(self):
        """name -> whether a name regex full-matches it (as the node's output 0)."""
        if len(self.regexes) == 1:
            return self.regexes[0].fullmatch  # the common case, without a Python frame
        return lambda name: any(regex.fullmatch(name) for regex in self.regexes)

    def output_name_matches(self, name, output_count):
        """Whether a name regex full-matches `name:k` for some output 0 < k < output_count."""
        return any(regex.fullmatch(f"{name}:{k}")
                   for regex in self.regexes for k in range(1, output_count))


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
    for pattern, key in names:
        regex = compile_regex(pattern)
        matched = [c for c in candidates if regex.fullmatch(c.name)]
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
    for pattern in exclude:
        regex = compile_regex(pattern)
        chosen = {c: k for c, k in chosen.items() if not regex.fullmatch(c.name)}
    if not chosen:
        raise errors.NoMatch("every selected tensor is excluded")
    for candidate in chosen:
        if candidate.blocked:
            raise errors.NotTappable(
                f"{candidate.op} node '{candidate.name}' is {candidate.blocked}"
            )
    return [(c, chosen[c]) for c in candidates if c in chosen]


def compile_regex(pattern):
    """A selector's regex, compiled; a bad one is a NoMatch naming it."""
    try:
        return re.compile(pattern)
    except re.error as error:
        raise errors.NoMatch(f"invalid regex: {error}", pattern) from None


def _merge_key(old, new, candidate):
    if old is not None and new is not None and old != new:
        raise errors.BadKey(f"two keys given for one tensor: '{old}' and '{new}'", candidate.name)
    return new if new is not None else old


def _no_match_message(kind, selector, known):
    literal = re.sub(r"[\\^$.*+?()\[\]{}|]", "", selector)  # compare names with the regex's text
    close = difflib.get_close_matches(literal, sorted(known), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"{kind} selector '{selector}' matches no tappable tensor{hint}"

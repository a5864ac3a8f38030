"""Tap keys: the names under which taps appear as signature outputs.

A tap's default key is its tensor's name (`node`, or `node:k` for output k > 0) with every
character outside `[A-Za-z0-9_]` replaced by `_`, so keys are valid everywhere a client
meets them (TF Serving JSON, `saved_model_cli --outdir` file names, TFLite signatures).
A tensor reached through several call paths (one tf.function called from two places)
gets one tap per path, keyed `<key>__<call nodes that tell the paths apart>`. A default
key that collides with an existing output or another tap gets `_1`, `_2`, ... appended;
a key the user chose must be free, or it is an error.
"""

import collections
import re

from graphtap import errors

_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_]")
KEY_CHARS = r"[A-Za-z0-9_.\-]"  # what a key the user chooses may hold
VALID_KEY = re.compile(f"^{KEY_CHARS}+$")


def sanitize(name):
    return _INVALID_CHARS.sub("_", name)


def assign_keys(selected, existing_keys):
    """[(candidate, chosen key or None)] -> [(candidate, key)], keys unique and new."""
    by_tensor = collections.defaultdict(list)
    for candidate, chosen in selected:
        by_tensor[candidate.tensor_key].append((candidate, chosen))
    taken = set(existing_keys)
    for _, chosen in selected:
        if chosen is None:
            continue
        if not VALID_KEY.match(chosen):
            raise errors.BadKey("a key may hold only letters, digits, '_', '.' and '-'", chosen)
        if chosen in existing_keys:
            raise errors.BadKey("key is already an output of the signature", chosen)
    taken.update(chosen for _, chosen in selected if chosen is not None)
    keyed, counters = {}, {}
    for group in by_tensor.values():
        candidate, chosen = group[0]
        base = chosen or sanitize(candidate.name)
        suffixes = _path_suffixes([c for c, _ in group])
        for (candidate, chosen), suffix in zip(group, suffixes):
            key = base + suffix
            if chosen is None or suffix:
                key = unique_name(key, taken, counters)
            taken.add(key)
            keyed[candidate] = key
    return [(candidate, keyed[candidate]) for candidate, _ in selected]


def _path_suffixes(candidates):
    if len(candidates) == 1:
        return [""]
    common = set.intersection(*(set(c.calls) for c in candidates))
    suffixes = [
        "__" + "__".join(sanitize(call.node) for call in c.calls if call not in common)
        for c in candidates
    ]
    if len(set(suffixes)) < len(suffixes):
        suffixes = [f"__path{i}" for i in range(len(candidates))]
    return suffixes


def unique_name(name, taken, counters=None):
    """`name`, or `name_1`, `name_2`, ... : the first not in `taken`. `counters`, a dict
    kept across calls while `taken` only grows, remembers where each search stopped."""
    if name not in taken:
        return name
    n = counters.get(name, 1) if counters is not None else 1
    while f"{name}_{n}" in taken:
        n += 1
    if counters is not None:
        counters[name] = n + 1
    return f"{name}_{n}"


def fresh_names(base, taken):
    """Yields `base`, `base_1`, `base_2`, ... skipping those in `taken`, to which each
    name yielded is added (one pass, however many names are drawn)."""
    n = 0
    while True:
        name = base if n == 0 else f"{base}_{n}"
        n += 1
        if name not in taken:
            taken.add(name)
            yield name

"""The manifest, `assets.extra/graphtap.json`: what graphtap tapped, one record per tap.

One reader and one writer, shared by tap (which extends an input's manifest), dump and
verify. The file lies in a model directory anyone may have edited, so the reader checks
every record it returns. No numpy, no TensorFlow: the rewrite layer uses it.
"""

import json
import os

from graphtap import errors
from graphtap.rewrite import source_files

PATH = os.path.join("assets.extra", "graphtap.json")

# What each record must hold, and the types its readers count on (None: JSON null).
_FIELDS = {"signature": (str, type(None)), "key": (str,), "dtype": (str,),
           "shape": (list, type(None))}

_JSON = json.JSONEncoder()


def read(model_dir):
    """The tap records (dicts) of the manifest of `model_dir`, or None if it has none.
    Records written before `source_signature` existed get their `signature` as it.
    Raises CorruptModel, naming the file, when it is not a manifest graphtap wrote."""
    path = os.path.join(model_dir, PATH)
    if not os.path.lexists(path):  # (also where assets.extra is no directory)
        return None
    data = source_files.read_regular(path)  # never a FIFO's or a device's
    try:
        taps = json.loads(data)["taps"]
    # RecursionError: JSON nested deeper than the decoder recurses.
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        raise errors.CorruptModel("unreadable graphtap manifest: not a JSON object with a "
                                  "list of taps", path) from None
    if not isinstance(taps, list):
        raise errors.CorruptModel("unreadable graphtap manifest: 'taps' is no list", path)
    for position, tap in enumerate(taps):
        problem = _problem(tap)
        if problem:
            raise errors.CorruptModel(f"unreadable graphtap manifest: tap {position} {problem}",
                                      path)
        tap.setdefault("source_signature", tap["signature"])
    return taps


def _problem(tap):
    """What is wrong with one record, or None."""
    if not isinstance(tap, dict):
        return "is no JSON object"
    for field, types in _FIELDS.items():
        if field not in tap:
            return f"has no '{field}'"
        if not isinstance(tap[field], types):
            return f"has a bad '{field}'"
    if tap["shape"] is not None and not all(type(d) is int for d in tap["shape"]):
        return "has a bad 'shape'"
    if not isinstance(tap.get("source_signature", ""), (str, type(None))):
        return "has a bad 'source_signature'"
    return None


def encode(records):
    """The manifest's bytes for `records` (dicts, in order)."""
    # One tap per line: readable, and json's C encoder does not indent.
    lines = ",\n".join("  " + _JSON.encode(tap) for tap in records)
    return ('{"taps": [\n' + lines + "\n]}\n").encode("utf-8")

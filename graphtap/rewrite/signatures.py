"""Which meta graph and which signatures a command works on: one policy for every verb."""

from graphtap import errors

DEFAULT_SIGNATURE = "serving_default"
# TensorFlow runs this signature when loading a model, to initialize it: no command's.
INIT_OP_SIGNATURE = "__saved_model_init_op"


def tags(tag_set):
    """A tag set given as "serve,gpu" or as a sequence of tags -> a sorted list."""
    found = tag_set.split(",") if isinstance(tag_set, str) else list(tag_set)
    return sorted({tag for tag in found if tag})


def meta_graph_position(saved_model, tag_set, where):
    """Which meta graph of `saved_model` has exactly the tags `tag_set`."""
    wanted = tags(tag_set)
    found = [list(mg.meta_info_def.tags) for mg in saved_model.meta_graphs]
    for position, have in enumerate(found):
        if sorted(set(have)) == wanted:
            return position
    raise errors.UnknownSignature(f"no meta graph with tags {','.join(wanted)}; it has "
                                  + "; ".join(",".join(have) for have in found), where)


def choose_signatures(keys, requested, where):
    """The signature keys to use among a model's `keys`: `requested` (a key, keys, or
    None for the default: `serving_default`, else the only one), in order, once each."""
    available = sorted(k for k in keys if k != INIT_OP_SIGNATURE)
    if requested is None:
        if DEFAULT_SIGNATURE in available:
            return [DEFAULT_SIGNATURE]
        if len(available) == 1:
            return available
        raise errors.UnknownSignature(
            f"choose a signature: {', '.join(available) or 'none'}", where)
    chosen = [requested] if isinstance(requested, str) else list(dict.fromkeys(requested))
    for key in chosen:
        if key not in available:
            raise errors.UnknownSignature(
                f"no signature '{key}'; it has {', '.join(available) or 'none'}", where)
    return chosen


def runnable_signatures(keys):
    """A model's signature keys but the init op's, sorted."""
    return sorted(k for k in keys if k != INIT_OP_SIGNATURE)

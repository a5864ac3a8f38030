"""The errors graphtap raises. Each says what is wrong and names the file or name at fault.

The CLI prints `graphtap: error: <message>` on one line and exits with status 2.
"""


class GraphtapError(Exception):
    """Base class: `what` is the message, `where` the file or name it concerns."""

    def __init__(self, what, where=None):
        self.what = what
        self.where = where
        super().__init__(f"{what} ({where})" if where else what)


class InputNotFound(GraphtapError):
    """The input path does not exist."""


class NotAModel(GraphtapError):
    """The input is neither a SavedModel directory nor a GraphDef file."""


class CorruptModel(GraphtapError):
    """The input parses badly or is inconsistent (a missing node, a call cycle, ...)."""


class UnknownSignature(GraphtapError):
    """The requested signature or tag set is not in the model."""


class NoMatch(GraphtapError):
    """A selector matched no tappable tensor."""


class NotTappable(GraphtapError):
    """A selected tensor cannot be exposed (inside a loop body or a conditional branch, ...)."""


class UnknownOp(GraphtapError):
    """An op has no definition in the model or in TensorFlow's registry."""


class BadKey(GraphtapError):
    """A tap key is invalid or collides with an existing output."""


class NothingToTap(GraphtapError):
    """Every selected tensor is already tapped."""


class OutputExists(GraphtapError):
    """The output exists and overwriting was not asked for."""


class OutputInsideInput(GraphtapError):
    """The output is the input, or lies inside it."""


class UnsafeInput(GraphtapError):
    """The input holds what graphtap never reads: a link out of it, a FIFO, a device."""


class BadArgument(GraphtapError):
    """An argument has a value the operation does not take, or one that contradicts another."""


class BadInput(GraphtapError):
    """Data that the signature cannot take: unknown name, wrong dtype or shape, unreadable."""


class InternalError(GraphtapError):
    """The rewrite produced an inconsistent model: a bug in graphtap."""

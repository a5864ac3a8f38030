"""The ops that run functions, one class per kind, as TensorFlow's convert_to_constants.py
has them (`_PartitionedCall`, `_While`, `_If`, `_Case`): which attrs name the functions,
where the node's inputs to them start, how a path through the node is classified, and
which step of the pass plumbs a tap out through it. A new op kind is one new class,
listed in KINDS.

A node whose op is a function's name (a call by name) is FUNCTION_OP's.
"""


class CallerKind:
    """What the index and the pass need to know of one kind of op that runs functions."""

    ops = frozenset()
    function_attrs = ()  # attrs whose values name the functions the node runs
    first_function_input = 0  # the node's inputs from here on are the functions' inputs
    call_attrs = ()  # attrs naming a function run as a plain call: its outputs are the node's
    loop_body_attr = None  # attr naming a loop body, which runs once per iteration
    outputs_attr = None  # attr listing the node's output dtypes, which must match the callee's

    def functions(self, node):
        """[(attr name, function name)] of the functions the node runs, in attr order."""
        found = []
        for attr in self.function_attrs:
            value = node.attr[attr]
            if value.HasField("func"):
                found.append((attr, value.func.name))
            else:
                found.extend((attr, func.name) for func in value.list.func)
        return found

    def called(self, node):
        """The function a plain call node runs, or None."""
        return node.attr[self.call_attrs[0]].func.name if self.call_attrs else None

    def edge(self, node, callee):
        """How a path runs into `callee` through `node`: "call" (its outputs are the
        node's), "body" (a While's body), "branch" (an If/Case branch), or "other"."""
        return "call" if self.called(node) == callee else "other"

    def rewire(self, plumber, site):
        """Gives the node the outputs its callee on the path gained (plumbing.TapRewrite
        does each kind's step); returns the node's new outputs as plumbing.NewOutput."""
        return plumber.rewire_call(site)


class PartitionedCall(CallerKind):
    ops = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
    function_attrs = ("f",)
    call_attrs = ("f",)
    outputs_attr = "Tout"


class FunctionOp(CallerKind):
    """A node whose op type is the name of the function it calls."""

    def called(self, node):
        return node.op


class While(CallerKind):
    ops = frozenset({"While", "StatelessWhile"})
    function_attrs = ("cond", "body")
    loop_body_attr = "body"

    def edge(self, node, callee):
        return "body" if node.attr["body"].func.name == callee else "other"

    def rewire(self, plumber, site):
        return plumber.rewire_loop(site)


class If(CallerKind):
    ops = frozenset({"If", "StatelessIf"})
    function_attrs = ("then_branch", "else_branch")
    first_function_input = 1  # the condition comes first

    def edge(self, node, callee):
        return "branch" if callee in (name for _, name in self.functions(node)) else "other"

    def rewire(self, plumber, site):
        return plumber.rewire_branch(site)


class Case(If):
    ops = frozenset({"Case", "StatelessCase"})
    function_attrs = ("branches",)  # the branch index comes first


KINDS = (PartitionedCall(), While(), If(), Case())
FUNCTION_OP = FunctionOp()
_BY_OP = {op: kind for kind in KINDS for op in kind.ops}
CALL_OPS = PartitionedCall.ops


def kind_of(node, functions=None):
    """The CallerKind of `node`; FUNCTION_OP for a call by name (with `functions`, only
    if its op is one of them; without, for every op not in KINDS); else None."""
    kind = _BY_OP.get(node.op)
    if kind is None and (functions is None or node.op in functions):
        return FUNCTION_OP
    return kind


def kind_of_op(op):
    """The CallerKind of op type `op` in KINDS, or None."""
    return _BY_OP.get(op)


def called_function(node, functions):
    """The function a plain call node runs (by a call op's attr, or by name), else None."""
    kind = kind_of(node, functions)
    return kind.called(node) if kind is not None else None

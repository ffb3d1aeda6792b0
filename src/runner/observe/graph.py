"""The autograd graph behind a loss, walked over `grad_fn.next_functions` iteratively (no recursion
limit), each node once by identity (torch keeps a node's object while the walk holds it)."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd.graph import Node

from runner.build import Built
from runner.observe import Look, Observer, due

Root = torch.Tensor | Node | None
Names = Mapping[str, torch.Tensor] | None  # parameters by name, to label their leaves

LEAF = "AccumulateGrad"  # the node that writes .grad into a leaf tensor
NO_GRAPH = "(no autograd graph: the tensor has no grad_fn)"


def _node(root: Root) -> Node | None:
    return root.grad_fn if isinstance(root, torch.Tensor) else root  # None for a leaf tensor


def _children(node: Node) -> list[Node]:
    # None marks an input that needs no gradient (x and y in the post)
    return [child for child, _ in node.next_functions if child is not None]


def _name(node: Node) -> str:
    # type name, not node.name(): that one says "torch::autograd::AccumulateGrad"
    return type(node).__name__


def _label(node: Node, names: Names, form: str = "{op} ({param})") -> str:
    """The node's op; for a leaf that accumulates into a parameter in `names`, `form`."""
    variable = getattr(node, "variable", None)  # only AccumulateGrad has one
    param = next((n for n, t in (names or {}).items() if t is variable), None)
    return _name(node) if param is None else form.format(op=_name(node), param=param)


def nodes(root: Root) -> list[Node]:
    """Each node once, in the order a recursive DFS would first reach it."""
    start = _node(root)
    seen: dict[Node, None] = {}  # ordered as first reached: the preorder itself
    stack = [start] if start is not None else []
    while stack:
        node = stack.pop()
        if node not in seen:
            seen[node] = None
            stack.extend(reversed(_children(node)))  # reversed: first child is popped first
    return list(seen)


def graph_stats(root: Root) -> dict[str, float]:
    """Node, leaf and per-op counts and depth (longest path to a leaf, in nodes), all zero
    without a graph: one postorder walk, as it runs at every log step."""
    start = _node(root)
    depth: dict[Node, int] = {}
    children_of: dict[Node, list[Node]] = {}
    stack = [start] if start is not None else []
    while stack:
        node = stack[-1]
        children = children_of.get(node)
        if children is None:  # first visit: its unseen children go first
            children = children_of[node] = _children(node)
            stack.extend(c for c in children if c not in children_of)
        else:
            stack.pop()
            if node not in depth:
                depth[node] = 1 + max((depth[c] for c in children), default=0)
    ops = Counter(map(_name, children_of))
    return {
        "graph/nodes": float(len(children_of)),
        "graph/leaves": float(ops[LEAF]),
        "graph/depth": float(depth[start]) if start is not None else 0.0,
        **{f"graph/op/{op}": float(n) for op, n in sorted(ops.items())},
    }


def graph_chain(root: Root, names: Names = None) -> str:
    """The graph on one line: `A → B → (C → D), E`; a node seen before is `X (see above)`."""
    start = _node(root)
    if start is None:
        return NO_GRAPH
    out: list[str] = []
    seen: set[Node] = set()
    # text to write, or (node, whether it is one of several children)
    stack: list[str | tuple[Node, bool]] = [(start, False)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node, in_list = item
        children = _children(node)
        if node in seen:
            out.append(f"{_label(node, names)} (see above)")
        elif in_list and children:  # a chain inside a comma list needs parentheses
            out.append("(")
            stack += [")", (node, False)]
        else:
            seen.add(node)
            out.append(_label(node, names))
            for i, child in reversed(list(enumerate(children))):
                stack += [(child, len(children) > 1), ", " if i else " → "]
    return "".join(out)


def graph_tree(root: Root, names: Names = None, *, max_lines: int = 200) -> str:
    """The graph `tree`-style, one line per edge plus the root (a node reached again is
    `X (see above)`); past `max_lines`, a final `... (N more nodes)` keeps a big MLP readable."""
    start = _node(root)
    if start is None:
        return NO_GRAPH
    lines: list[str] = []
    seen: set[Node] = set()
    stack = [(start, "", "")]  # (node, text before the label, indent for its children)
    while stack and len(lines) < max_lines:
        node, head, indent = stack.pop()
        again = node in seen
        seen.add(node)
        lines.append(head + _label(node, names) + (" (see above)" if again else ""))
        children = [] if again else _children(node)
        for i, child in reversed(list(enumerate(children))):
            branch, below = ("└── ", "    ") if i == len(children) - 1 else ("├── ", "│   ")
            stack.append((child, indent + branch, indent + below))
    if stack:  # cut short: the nodes no line has shown yet, or the lines of repeats left
        left = len(nodes(start)) - len(seen)
        more = f"{left} more nodes" if left else f"{len(stack)} more lines, of nodes shown above"
        lines.append(f"... ({more})")
    return "\n".join(lines)


def graph_dot(root: Root, names: Names = None) -> str:
    """Graphviz source: one node per autograd node, edges from the loss towards the leaves."""
    every = nodes(root)
    ids = {node: f"n{i}" for i, node in enumerate(every)}
    lines = ["digraph autograd {", "  node [shape=box];"]
    for node in every:
        # JSON's string escapes (backslash, quote, newline) are DOT's too
        label = json.dumps(_label(node, names, "{param}\n({op})"), ensure_ascii=False)
        shape = ", shape=ellipse" if _name(node) == LEAF else ""
        lines.append(f"  {ids[node]} [label={label}{shape}];")
    # one edge per non-None input, repeats kept: h + h really feeds h twice
    lines += [f"  {ids[node]} -> {ids[child]};" for node in every for child in _children(node)]
    return "\n".join(lines) + "\n}\n"


@dataclass
class SavedBytes:
    """What autograd kept for backward; read `.total` after the `with` block."""

    total: int = 0


@contextlib.contextmanager
def saved_bytes() -> Iterator[SavedBytes]:
    """The bytes the forward inside the block saved for backward, a tensor saved twice counted
    once. Wrap the forward only: a new tensor at a freed graph's address would pass for a repeat."""
    saved, seen = SavedBytes(), set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.data_ptr(), t.numel(), t.dtype, t.device)
        if key not in seen:
            seen.add(key)
            saved.total += t.numel() * t.element_size()
        return t  # unchanged: we only count, autograd keeps the tensor as usual

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


class GraphStats(Observer):
    """Graph statistics when `due`; the first graph also as text, and in `out` (the run
    directory) as graph.txt and graph.dot at once, so that a killed run has them too."""

    def __init__(self, b: Built, every: int, last: int, out: Path | None, resumed: bool) -> None:
        self.params, self.logger, self.every, self.last = b.params, b.logger, every, last
        self.out, self.resumed = out, resumed  # resumed in its directory: the tree is there
        self.previous = -1  # the step last walked
        self.tree: str | None = None  # the first graph walked, for the first step's printout

    def log(self, look: Look) -> None:
        if look.root is None or not due(look, self.every, self.previous, self.last):
            return
        self.previous = look.step
        stats = graph_stats(look.root)
        if look.saved_bytes is not None:
            stats["graph/saved_bytes"] = float(look.saved_bytes)
        self.logger.scalars(look.step, stats)
        if self.tree is None:
            root, params = look.root, self.params
            chain, self.tree = graph_chain(root, params), graph_tree(root, params)
            if not self.resumed:
                self.logger.text(look.step, "graph/tree", f"{chain}\n\n{self.tree}")
            if self.out is not None:
                (self.out / "graph.txt").write_text(f"{chain}\n\n{self.tree}\n")
                (self.out / "graph.dot").write_text(graph_dot(root, params))

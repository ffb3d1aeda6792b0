"""The autograd graph behind a loss, walked the micrograd way.

Every function here is pure: it reads ``grad_fn.next_functions`` and returns
numbers or text. Walks are iterative (a 10,000-op graph must not hit Python's
recursion limit) and visit each node once, so they run in linear time.
Nodes are kept in sets and dicts by identity: torch hands back the same
Python object for a node as long as a reference to it is alive, and the walk
holds one.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.graph import Node

from runner.observe import Look, Observer

Root = torch.Tensor | Node | None

LEAF = "AccumulateGrad"  # the node that writes .grad into a leaf tensor
NO_GRAPH = "(no autograd graph: the tensor has no grad_fn)"


def _node(root: Root) -> Node | None:
    # a leaf tensor or a detached one has grad_fn None: there is no graph to walk
    return root.grad_fn if isinstance(root, torch.Tensor) else root


def _children(node: Node) -> list[Node]:
    # None marks an input that needs no gradient (x and y in the post)
    return [child for child, _ in node.next_functions if child is not None]


def _name(node: Node) -> str:
    # type name, not node.name(): that one says "torch::autograd::AccumulateGrad"
    return type(node).__name__


def _label(node: Node, names_by_id: dict[int, str]) -> str:
    name = _name(node)
    if name == LEAF:
        param = names_by_id.get(id(node.variable))
        return f"{name} ({param})" if param is not None else name
    return name


def _names_by_id(names: Mapping[str, torch.Tensor] | None) -> dict[int, str]:
    # id() is safe here: `names` keeps its tensors alive while we look them up
    return {id(t): n for n, t in (names or {}).items()}


def _preorder(root: Root) -> list[Node]:
    """Each node once, in the order a recursive DFS would first reach it."""
    start = _node(root)
    order, seen, stack = [], set(), [start] if start is not None else []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        order.append(node)
        stack.extend(reversed(_children(node)))  # reversed: first child is popped first
    return order


def grad_fn_names(root: Root) -> list[str]:
    return [_name(node) for node in _preorder(root)]


def graph_stats(root: Root) -> dict[str, float]:
    """Node, leaf and per-op counts and depth; all zero when there is no graph.

    One postorder walk gives all of them (it runs at every log step): each node's depth is
    the longest path to a leaf below it, counted in nodes, known once its children's are.
    """
    start = _node(root)
    ops: Counter[str] = Counter()
    depth: dict[Node, int] = {}
    children_of: dict[Node, list[Node]] = {}
    stack = [start] if start is not None else []
    while stack:
        node = stack[-1]
        children = children_of.get(node)
        if children is None:  # first visit: count it, then its unseen children go first
            children = children_of[node] = _children(node)
            ops[type(node).__name__] += 1
            stack.extend(c for c in children if c not in children_of)
        else:
            stack.pop()
            if node not in depth:
                depth[node] = 1 + max((depth[c] for c in children), default=0)
    stats = {
        "graph/nodes": float(len(children_of)),
        "graph/leaves": float(ops[LEAF]),
        "graph/depth": float(depth[start]) if start is not None else 0.0,
    }
    stats.update({f"graph/op/{op}": float(n) for op, n in sorted(ops.items())})
    return stats


def graph_chain(root: Root, names: Mapping[str, torch.Tensor] | None = None) -> str:
    """The graph on one line: `A → B → (C → D), E`; a node seen before is `X (see above)`."""
    start = _node(root)
    if start is None:
        return NO_GRAPH
    names_by_id = _names_by_id(names)
    out: list[str] = []
    seen: set[Node] = set()
    # work items: ("text", str), ("node", Node), or ("child", Node), which
    # decides on its turn whether the child needs parentheses
    stack: list[tuple[str, object]] = [("node", start)]
    while stack:
        kind, item = stack.pop()
        if kind == "text":
            out.append(item)
        elif kind == "child":
            if item in seen or not _children(item):
                stack.append(("node", item))
            else:  # a chain of several nodes inside a comma list needs parentheses
                stack += [("text", ")"), ("node", item), ("text", "(")]
        elif item in seen:
            out.append(f"{_label(item, names_by_id)} (see above)")
        else:
            seen.add(item)
            out.append(_label(item, names_by_id))
            children = _children(item)
            if len(children) == 1:
                stack += [("node", children[0]), ("text", " → ")]
            elif children:
                todo: list[tuple[str, object]] = [("text", " → ")]
                for i, child in enumerate(children):
                    if i > 0:
                        todo.append(("text", ", "))
                    todo.append(("child", child))
                stack += reversed(todo)
    return "".join(out)


def graph_tree(
    root: Root, names: Mapping[str, torch.Tensor] | None = None, *, max_lines: int = 200
) -> str:
    """The graph as a `tree`-style listing, one node per line, leaves named.

    A node reached again prints as `X (see above)` without its children, so
    the text stays linear in graph size; past `max_lines` the rest is counted
    in a final `... (N more nodes)` line, so a big MLP stays readable.
    """
    start = _node(root)
    if start is None:
        return NO_GRAPH
    names_by_id = _names_by_id(names)
    lines: list[str] = []
    hidden = 0
    seen: set[Node] = set()
    stack = [(start, "", "")]  # (node, text before the label, indent for its children)
    while stack:
        node, head, indent = stack.pop()
        again = node in seen
        seen.add(node)
        if len(lines) < max_lines:
            lines.append(head + _label(node, names_by_id) + (" (see above)" if again else ""))
        else:  # keep walking without building strings, only to count what is left
            hidden += 1
        if again:
            continue
        children = _children(node)
        for i, child in reversed(list(enumerate(children))):
            last = i == len(children) - 1
            if len(lines) < max_lines:
                branch = (
                    indent + ("└── " if last else "├── "),
                    indent + ("    " if last else "│   "),
                )
            else:
                branch = ("", "")
            stack.append((child, *branch))
    if hidden:
        lines.append(f"... ({hidden} more nodes)")
    return "\n".join(lines)


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def graph_dot(root: Root, names: Mapping[str, torch.Tensor] | None = None) -> str:
    """Graphviz source: one node per autograd node, edges from the loss towards the leaves."""
    nodes = _preorder(root)
    ids = {node: f"n{i}" for i, node in enumerate(nodes)}
    names_by_id = _names_by_id(names)
    lines = ["digraph autograd {", "  node [shape=box];"]
    for node in nodes:
        name = _name(node)
        if name == LEAF:
            param = names_by_id.get(id(node.variable))
            label = f"{param}\n({name})" if param is not None else name
            lines.append(f"  {ids[node]} [label={_quote(label)}, shape=ellipse];")
        else:
            lines.append(f"  {ids[node]} [label={_quote(name)}];")
    # one edge per non-None input, repeats kept: h + h really feeds h twice
    lines += [f"  {ids[node]} -> {ids[child]};" for node in nodes for child in _children(node)]
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass
class SavedBytes:
    """What autograd kept for backward; read `.total` after the `with` block."""

    total: int = 0


@contextlib.contextmanager
def saved_bytes() -> Iterator[SavedBytes]:
    """Count the bytes saved for backward by the forward pass run inside the block.

    A tensor saved by two ops (or twice by one) is counted once. Wrap the
    forward only: if a graph is freed inside the block, its memory can be
    reused at the same address and a new tensor there would be taken for a repeat.
    """
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
    """The observer: graph statistics at the log steps that are multiples of `every`; the
    first graph also as text (`graph/tree`), kept for graph.txt and graph.dot."""

    def __init__(self, params: Mapping[str, torch.Tensor], logger: Any, every: int):
        self.params, self.logger, self.every = params, logger, every
        self.first: dict[str, str] = {}  # tree, chain, dot of the first graph walked

    def log(self, look: Look) -> None:
        if look.root is None or look.step % self.every != 0:
            return
        stats = graph_stats(look.root) | {"graph/saved_bytes": float(look.saved_bytes)}
        self.logger.scalars(look.step, stats)
        if not self.first:
            self.first = describe(look.root, self.params)
            self.logger.text(
                look.step, "graph/tree", self.first["chain"] + "\n\n" + self.first["tree"]
            )


def describe(root: Root, params: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """The graph three ways: a tree, one line, and Graphviz source."""
    return {
        "tree": graph_tree(root, params),
        "chain": graph_chain(root, params),
        "dot": graph_dot(root, params),
    }

"""What a `trainer.epochs=0` run shows: one forward and backward pass, printed as the autograd
post prints them (`y = 16.0`, `a.grad_fn = None`, `dy/dx = 8.0`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from runner.build import losses
from runner.config.formula import FUNCTIONS, parse

MAX_PIECES = 60  # sub-expressions listed one per line; a longer formula lists leaves and loss only
MAX_ELEMENTS = 10  # tensor elements printed in full; bigger tensors print their shape and norm


def _objective(loss_fn: Any) -> str | None:
    """An objective formula as `y` reads, its reduction included; None for a loss over data."""
    if not (isinstance(loss_fn, losses.Expression) and loss_fn.objective_only):
        return None
    text = loss_fn.formula.source.strip()
    return text if loss_fn.reduction is None else f"{loss_fn.reduction}({text})"


def grad_fns(
    loss_fn: Any, params: Mapping[str, torch.Tensor], loss: torch.Tensor
) -> dict[str, str | None]:
    """Each result's grad_fn, leaf to root, as the post prints `b.grad_fn`: each piece of an
    objective formula (`a * 3` -> MulBackward0), else (pieces have no names) leaves and loss."""
    formula = _objective(loss_fn)
    if formula is not None:
        pieces = formula_grad_fns(loss_fn.formula.source, dict(loss_fn.named_parameters()))
        if pieces is not None:
            if loss_fn.reduction is not None:  # the reduction adds the last node itself
                pieces[formula] = _name(loss)
            return pieces
    out = {name: _name(p) for name, p in params.items()}
    return out | {result_name(loss_fn, params): _name(loss)}


def result_name(loss_fn: Any, params: Mapping[str, Any]) -> str:
    """What the printout calls the pass's result: `y` for an objective formula, as the post
    does, `loss` for a loss over data; another letter where a parameter has that name."""
    names = ("loss", "L", "J") if _objective(loss_fn) is None else ("y", "f", "z")
    return next((n for n in names if n not in params), "result")


def formula_grad_fns(source: str, env: Mapping[str, torch.Tensor]) -> dict[str, str | None] | None:
    """{piece: its grad_fn} in evaluation order, each piece evaluated again on its own; only
    those on the graph (`2 * 3` is a plain number), once each. None for a very long formula."""
    text = source.lstrip()  # the positions of parse's tree count from the stripped text
    tree = ast.parse(text, mode="eval").body
    # counted without recursion first: past the limit, a deep formula is never recursed into
    if sum(isinstance(node, ast.expr) for node in ast.walk(tree)) > MAX_PIECES:
        return None
    out: dict[str, str | None] = {}
    for node in _postorder(tree):
        if isinstance(node, ast.Constant) or (isinstance(node, ast.Name) and node.id in FUNCTIONS):
            continue
        # as typed; over several lines (a comment, a `\`) as Python writes it on one
        piece = ast.get_source_segment(text, node) or ""
        piece = " ".join(piece.split()) if piece and "\n" not in piece else ast.unparse(node)
        if piece in out:
            continue
        value = parse(ast.unparse(node))(env)
        if isinstance(value, torch.Tensor) and value.requires_grad:
            out[piece] = _name(value)
    return out


def _postorder(node: ast.AST) -> Iterator[ast.expr]:
    """Children before parents: the order in which evaluation creates the results."""
    for child in ast.iter_child_nodes(node):
        yield from _postorder(child)
    if isinstance(node, ast.expr):  # not the operators and contexts
        yield node


def _name(t: torch.Tensor) -> str | None:
    return None if t.grad_fn is None else type(t.grad_fn).__name__


def lines(
    value: float | None,
    loss_fn: Any,
    params: Mapping[str, torch.Tensor],
    pieces: Mapping[str, str | None],
    tree: str | None,
) -> list[str]:
    """The terminal's account of the pass: parameters, value, grad_fns, graph, gradients."""
    formula = _objective(loss_fn)
    y = result_name(loss_fn, params)
    out = [f"{name} = {shown(p)}" for name, p in params.items()]
    result = "n/a" if value is None else number(value)
    out.append(f"{y} = {result}" if formula is None else f"{y} = {formula} = {result}")
    last = list(pieces)[-1] if pieces else None
    for piece, fn in pieces.items():
        label = y if piece == last else piece
        out.append(f"{label if label.isidentifier() else f'({label})'}.grad_fn = {fn}")
    if tree:
        out += [f"{y}.backward() walks the graph from the root to the leaves:", *tree.splitlines()]
    for name, p in params.items():
        out.append(f"d{y}/d{name} = {'None' if p.grad is None else shown(p.grad)}")
    return out


def shown(t: torch.Tensor) -> str:
    """A tensor as the post prints it: `8.0`, `[3.0, 12.0, 27.0]`; big ones by shape and norm."""
    t = t.detach()
    if t.numel() > MAX_ELEMENTS:
        norm = torch.linalg.vector_norm(t.float()).item()
        return f"tensor of shape {tuple(t.shape)}, norm {number(norm)}"
    return number(t.cpu().tolist())


def number(value: Any) -> str:
    """7 significant digits (float32 holds about that many): `0.1`, not `0.10000000149011612`."""
    if isinstance(value, list):
        return "[" + ", ".join(number(v) for v in value) + "]"
    return repr(float(f"{value:.7g}"))

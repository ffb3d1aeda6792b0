"""The formula language: a whitelisted subset of Python expressions, evaluated with torch, parsed
with `ast` into closures (never eval/exec); a refusal names the piece not allowed."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Value = torch.Tensor | float
Env = Mapping[str, Value]
Compiled = Callable[[Env], Value]

_ELEMENTWISE = ("sin", "cos", "tan", "exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu")
FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    **{name: getattr(torch, name) for name in _ELEMENTWISE},
    "softplus": F.softplus,
    "mean": torch.mean,  # full reduction to a 0-d tensor
    "sum": torch.sum,  # full reduction to a 0-d tensor
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}

MAX_LENGTH = 10_000  # characters; far beyond any hand-written formula, and keeps parsing cheap
MAX_DEPTH = 200  # tree levels; keeps the compile walk and the closures clear of the recursion limit

ALLOWED = (
    "allowed: numbers, names, + - * / **, unary -, parentheses, and calls to "
    f"{', '.join(FUNCTIONS)}; constants {', '.join(CONSTANTS)}"
)


class FormulaError(ValueError):
    """A formula that is not in the language, or that cannot be evaluated with the given values."""


def _pow(base: Value, exponent: Value) -> Value:
    """`**`, but plain numbers as floats: `9**9**9` in integers would run for minutes, and a
    negative base to a fractional power would be complex (torch gives nan)."""
    if isinstance(base, torch.Tensor) or isinstance(exponent, torch.Tensor):
        return base**exponent
    result = float(base) ** exponent
    return math.nan if isinstance(result, complex) else result


_BINARY: dict[type[ast.operator], Callable[[Value, Value], Value]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: _pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Value], Value]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}

# Names for refused pieces, so the message says what the user wrote; the other nodes read well
# as their class name in lower case (`list`, `dict`, `lambda`, `subscript`, `await`).
_KINDS = {
    ast.IfExp: "conditional expression",
    ast.Compare: "comparison",
    ast.BoolOp: "boolean operator",
    **dict.fromkeys((ast.ListComp, ast.SetComp, ast.DictComp), "comprehension"),
    ast.GeneratorExp: "generator expression",
    ast.JoinedStr: "f-string",
    ast.NamedExpr: "assignment expression",
    ast.Starred: "starred argument",  # only a call's argument can be starred
    ast.YieldFrom: "yield",
}
_CONSTANT_KINDS = {str: "string", bytes: "bytes", bool: "boolean", complex: "complex number"}


def _error(source: str, message: str) -> FormulaError:
    shown = source if len(source) <= 80 else source[:77] + "..."
    return FormulaError(f"formula {shown!r}: {message}")


def _refused(source: str, message: str) -> FormulaError:
    return _error(source, f"{message}; {ALLOWED}")


def _text(source: str, node: ast.AST) -> str:
    text = ast.get_source_segment(source, node) or ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _symbol(op: ast.operator | ast.unaryop) -> str:
    """An operator as Python writes it (`//`, `not`), from its own unparser rather than a table."""
    if isinstance(op, ast.unaryop):
        return ast.unparse(ast.UnaryOp(op, ast.Name("a")))[:-1].strip()
    return ast.unparse(ast.BinOp(ast.Name("a"), op, ast.Name("b"))).split()[1]


def _describe(source: str, node: ast.AST) -> str:
    """What a refused node is, in the user's words: "attribute access '.real'"."""
    text = _text(source, node)
    match node:
        case ast.Attribute(attr=attr):
            return f"attribute access '.{attr}'"
        case ast.BinOp(op=op) | ast.UnaryOp(op=op):  # only the operators _compile refuses
            return f"operator '{_symbol(op)}' in '{text}'"
        case ast.Constant(value=str() | bytes()):
            return f"{_CONSTANT_KINDS[type(node.value)]} {text}"  # the text has its own quotes
        case ast.Constant(value=value):
            return f"{_CONSTANT_KINDS.get(type(value), 'constant')} '{text}'"
    return f"{_KINDS.get(type(node), type(node).__name__.lower())} '{text}'"


def _compile(node: ast.expr, source: str, names: set[str], depth: int = 0) -> Compiled:
    """Check one node against the whitelist and return a closure that evaluates it."""
    if depth > MAX_DEPTH:
        raise _error(
            source,
            f"nested too deeply: more than {MAX_DEPTH} levels (each + or * of a long sum or "
            "product is one, as Python reads it; sum(...) over a tensor parameter is one call)",
        )

    def sub(child: ast.expr) -> Compiled:
        return _compile(child, source, names, depth + 1)

    match node:
        case ast.Constant(value=bool()):
            pass  # bool is an int subclass: refuse it before the number case
        case ast.Constant(value=int() | float() as number):
            return lambda env: number
        case ast.Name(id=name) if name in CONSTANTS:
            constant = CONSTANTS[name]
            return lambda env: constant
        case ast.Name(id=name) if name in FUNCTIONS:
            raise _refused(source, f"function '{name}' used as a value; call it: {name}(...)")
        case ast.Name(id=name) if name.lower() in ("nan", "inf"):  # would be a parameter
            raise _refused(source, f"'{name}' is no constant here (only {', '.join(CONSTANTS)})")
        case ast.Name(id=name) if name.startswith("_"):
            raise _refused(source, f"name '{name}' is not allowed (no names starting with '_')")
        case ast.Name(id=name):
            names.add(name)
            # a missing value is reported by Formula.__call__; a lambda, not itemgetter,
            # which torch.compile cannot trace (the model's graph broke in two)
            return lambda env: env[name]
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            apply, lhs, rhs = _BINARY[type(op)], sub(left), sub(right)
            return lambda env: apply(lhs(env), rhs(env))
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            apply1, arg = _UNARY[type(op)], sub(operand)
            return lambda env: apply1(arg(env))
        case ast.Call():
            return _compile_call(node, source, sub)
    raise _refused(source, f"{_describe(source, node)} is not allowed")


def _compile_call(node: ast.Call, source: str, sub: Callable[[ast.expr], Compiled]) -> Compiled:
    func = node.func
    # `(sin)(x)` has the same tree as `sin(x)`; only the positions tell them apart.
    start = (node.lineno, node.col_offset)
    if not isinstance(func, ast.Name) or (func.lineno, func.col_offset) != start:
        call = _text(source, node)
        raise _refused(source, f"call '{call}' is not allowed (only a bare name can be called)")
    if func.id in CONSTANTS:
        raise _refused(source, f"'{func.id}' is a constant, not a function")
    if func.id not in FUNCTIONS:
        raise _refused(source, f"unknown function '{func.id}'")
    if node.keywords:
        keyword = _text(source, node.keywords[0])
        raise _refused(source, f"keyword argument '{keyword}' is not allowed")
    if len(node.args) != 1:
        raise _refused(source, f"{func.id}() takes 1 argument, got {len(node.args)}")
    function, arg = FUNCTIONS[func.id], sub(node.args[0])

    def call(env: Env) -> Value:
        value = arg(env)
        if not isinstance(value, torch.Tensor):  # `sin(1)`: a number, in float64 as Python's
            return function(torch.tensor(float(value), dtype=torch.float64)).item()
        return function(value)

    return call


def _parse_tree(source: object) -> ast.expr:
    if not isinstance(source, str):
        raise FormulaError(f"a formula must be a string, got {type(source).__name__} {source!r}")
    if not source.strip():
        raise _error(source, "empty; write an expression such as 'w * x + b'")
    if len(source) > MAX_LENGTH:
        raise _error(source, f"{len(source)} characters is too long (limit {MAX_LENGTH})")
    # eval mode refuses a leading indent, which YAML can easily add; the tree's positions (and
    # so the pieces quoted in messages) count from the stripped text
    text = source.lstrip()
    try:
        return ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        where = ""
        if exc.offset and exc.lineno == 1:
            where = f" at column {exc.offset + len(source) - len(text)}"
        elif exc.offset:
            where = f" at line {exc.lineno}, column {exc.offset}"
        raise _error(source, f"syntax error{where} ({exc.msg})") from None
    except (RecursionError, MemoryError):
        deep = "nested too deeply for Python's parser (a long sum counts each +)"
        raise _error(source, deep) from None
    except ValueError as exc:  # lone surrogates, which cannot be encoded
        raise _error(source, f"cannot be parsed ({exc})") from None


@dataclass(frozen=True)
class Formula:
    """A parsed formula: call it with values for its free names to evaluate it."""

    source: str
    names: frozenset[str] = field(init=False)  # free variables; not constants or function names
    _evaluate: Compiled = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: set[str] = set()
        evaluate = _compile(_parse_tree(self.source), self.source.lstrip(), names)
        object.__setattr__(self, "names", frozenset(names))
        object.__setattr__(self, "_evaluate", evaluate)

    def __reduce__(self) -> tuple[Callable[[str], Formula], tuple[str]]:
        return parse, (self.source,)  # closures do not pickle; the source recompiles

    def __call__(self, env: Env) -> Value:
        try:
            return self._evaluate(env)
        except KeyError as exc:  # only the names' lookups raise it
            given = ", ".join(sorted(env)) or "none"
            missing = f"no value for '{exc.args[0]}' (given: {given})"
            raise _error(self.source.lstrip(), missing) from None
        except torch.OutOfMemoryError:
            raise
        except (ArithmeticError, RuntimeError) as exc:
            # numbers that overflow or divide by zero; torch refusing shapes, dtypes or devices
            raise _error(self.source, f"{type(exc).__name__}: {exc}") from exc

    def render(self, values: Mapping[str, float], inputs: Collection[str] = ("x",)) -> str:
        """The formula with each value filled in to 3 decimals, for the end-of-run summary:
        `w * x + b` with w=1.9238, b=1.0503 is "1.924x + 1.050", as the post writes it."""
        return _render(_parse_tree(self.source), self.source.lstrip(), values, inputs)[0]


def parse(source: str) -> Formula:
    """Parse and check a formula; raises FormulaError naming the first piece not allowed."""
    return Formula(source)


# Python's precedence levels, lowest first; an atom never needs parentheses.
_ADD, _MUL, _UNARY_LEVEL, _POW, _ATOM = range(1, 6)
_LEVELS = {ast.Add: _ADD, ast.Sub: _ADD, ast.Mult: _MUL, ast.Div: _MUL, ast.Pow: _POW}


def _wrap(text: str, needed: bool) -> str:
    return f"({text})" if needed else text


def _render(
    node: ast.expr, source: str, values: Mapping[str, float], inputs: Collection[str]
) -> tuple[str, int]:
    """The text of a node and its precedence level, so the parent knows when to add parentheses."""

    def sub(child: ast.expr) -> tuple[str, int]:
        return _render(child, source, values, inputs)

    match node:
        case ast.Name(id=name) if name in values:
            value = float(values[name])  # a diverged run's too: `nan`, `1.3e+21`, not 22 digits
            text = f"{value:.3f}" if abs(value) < 1e6 else f"{value:.3g}"
            return text, _UNARY_LEVEL if text.startswith("-") else _ATOM
        case ast.Name(id=name):
            return name, _ATOM
        case ast.Constant():
            return _text(source, node), _ATOM  # literal numbers keep their source text
        case ast.Call(func=ast.Name(id=name), args=[arg]):
            return f"{name}({sub(arg)[0]})", _ATOM
        case ast.UnaryOp(op=op, operand=operand):
            text, level = sub(operand)
            sign = "-" if isinstance(op, ast.USub) else "+"
            return sign + _wrap(text, level <= _UNARY_LEVEL), _UNARY_LEVEL
        case ast.BinOp(
            left=ast.Name(id=p),
            op=ast.Mult(),
            right=ast.Name(id=x) | ast.BinOp(left=ast.Name(id=x), op=ast.Pow()),
        ) if p in values and x in inputs and x not in values:
            # a parameter times an input, or an input to a power: "1.924x", "1.000x**2"
            coefficient = sub(node.left)[0]
            plain = coefficient.lstrip("-").replace(".", "").isdigit()  # not `nan`, `1e+21`
            return coefficient + ("" if plain else " * ") + sub(node.right)[0], _MUL
        case ast.BinOp(left=left, op=op, right=right):
            level = _LEVELS[type(op)]
            (ltext, llevel), (rtext, rlevel) = sub(left), sub(right)
            right_assoc = isinstance(op, ast.Pow)  # ** groups to the right, the others to the left
            ltext = _wrap(ltext, llevel <= level if right_assoc else llevel < level)
            rtext = _wrap(rtext, rlevel < level if right_assoc else rlevel <= level)
            symbol = "**" if right_assoc else f" {_symbol(op)} "
            if level == _ADD and rtext.startswith("-"):  # as subtraction: "2.000x - 0.500"
                symbol, rtext = (" - " if symbol == " + " else " + "), rtext[1:]
            return ltext + symbol + rtext, level
    raise AssertionError(f"unrendered node {ast.dump(node)}")  # parse refused it already

"""The formula language: values and gradients against plain torch, refusals, rendering, fuzzing."""

import ast
import contextlib
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.config import formula
from runner.config.formula import CONSTANTS, FUNCTIONS, Formula, FormulaError, parse

# The same table written out again, so a wrong mapping in the module cannot pass by agreeing
# with itself.
TORCH = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "softplus": F.softplus,
    "mean": torch.mean,
    "sum": torch.sum,
}


def leaf(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def assert_matches_torch(source, reference, **values: torch.Tensor) -> None:
    """Evaluate a formula and the same expression in torch; values and gradients agree exactly."""
    mine = {k: v.detach().clone().requires_grad_() for k, v in values.items()}
    theirs = {k: v.detach().clone().requires_grad_() for k, v in values.items()}
    out, expected = parse(source)(mine), reference(**theirs)
    assert torch.equal(out, expected)
    out.sum().backward()
    expected.sum().backward()
    for name in values:
        assert torch.equal(mine[name].grad, theirs[name].grad), name


# --- values and gradients --------------------------------------------------------------------


def test_linear_matches_torch():
    assert_matches_torch(
        "w * x + b", lambda w, x, b: w * x + b, w=leaf(1.5), x=leaf(0.0, 0.5, 1.0), b=leaf(-0.25)
    )


def test_rosenbrock_matches_torch():
    assert_matches_torch(
        "(1 - a)**2 + 100*(b - a**2)**2",
        lambda a, b: (1 - a) ** 2 + 100 * (b - a**2) ** 2,
        a=leaf(-1.2),
        b=leaf(1.0),
    )


def test_sum_of_cubes_gradient():
    x = leaf(1.0, 2.0, 3.0)
    parse("sum(x**3)")({"x": x}).backward()
    assert x.grad.tolist() == [3.0, 12.0, 27.0]


@pytest.mark.parametrize("name", sorted(TORCH))
def test_each_function_matches_torch(name):
    assert_matches_torch(
        f"{name}(x * w)", lambda x, w: TORCH[name](x * w), x=leaf(0.25, 0.5, 2.0), w=leaf(1.5)
    )


def test_tables():
    assert set(FUNCTIONS) == set(TORCH)
    assert {"pi": math.pi, "e": math.e} == CONSTANTS
    assert parse("2 * pi + e")({}) == 2 * math.pi + math.e


def test_graph_has_the_expected_nodes():
    w, x, b = leaf(2.0), leaf(1.0, 2.0), leaf(1.0)
    out = parse("w * x + b")({"w": w, "x": x, "b": b})
    assert type(out.grad_fn).__name__ == "AddBackward0"
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "MulBackward0"


def test_numbers_stay_python_numbers():
    x = torch.linspace(0, 1, 50)
    assert torch.equal(parse("2*x + 1")({"x": x}), 2 * x + 1)
    assert parse("2*x + 1")({"x": 3.0}) == 7.0
    assert parse("-2 + 3")({}) == 1


def test_functions_accept_plain_numbers():
    """A function of a constant is a number, in Python's float64 precision (float32 would
    make log(1e-50) -inf, and sin(1) differ from math.sin(1) by 3e-8)."""
    assert parse("sin(pi / 2)")({}) == 1.0
    assert parse("relu(w)")({"w": -2.0}) == 0.0
    assert parse("log(1e-50)")({}) == pytest.approx(math.log(1e-50), rel=1e-12)
    x = torch.tensor(math.sin(1), dtype=torch.float64)
    assert parse("x - sin(1)")({"x": x}).item() == pytest.approx(0.0, abs=1e-15)


def test_evaluation_errors_name_the_formula():
    with pytest.raises(FormulaError, match=r"formula 'w \* x \+ b': no value for 'b'"):
        parse("w * x + b")({"w": 1.0, "x": 2.0})
    with pytest.raises(FormulaError, match="ZeroDivisionError"):
        parse("1 / (x - x)")({"x": 2.0})
    with pytest.raises(FormulaError, match="OverflowError"):
        parse("9**9**9")({})
    with pytest.raises(FormulaError, match="size of tensor"):
        parse("w * x")({"w": torch.ones(2), "x": torch.ones(3)})


def test_negative_base_to_fractional_power_is_nan_like_torch():
    assert math.isnan(parse("(-8) ** (1/3)")({}))
    assert torch.isnan(parse("x ** (1/3)")({"x": torch.tensor(-8.0)}))


@pytest.mark.parametrize(
    ("source", "names"),
    [
        ("w * x + b", {"w", "x", "b"}),
        ("2*x + 1", {"x"}),
        ("(1 - a)**2 + 100*(b - a**2)**2", {"a", "b"}),
        ("sum(x**3)", {"x"}),
        ("sin(x) * w + pi * e", {"x", "w"}),
        ("3.5", set()),
    ],
)
def test_names(source, names):
    assert parse(source).names == frozenset(names)


def test_formula_pickles_and_compares_by_source():
    f = parse("w * x + b")
    assert pickle.loads(pickle.dumps(f)) == f == Formula("w * x + b")


def test_leading_whitespace_is_fine_and_columns_count_it():
    assert parse("  w * x").names == {"w", "x"}
    with pytest.raises(FormulaError, match="syntax error at column 7"):
        parse("  w * * x")
    with pytest.raises(FormulaError, match=r"subscript 'x\[0\]'"):
        parse("  x[0]")
    assert parse("  2*x + w").render({"w": 1}) == "2 * x + 1.000"


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "piece"),
    [
        ("x.real", "attribute access '.real'"),
        ("x[0]", "subscript 'x[0]'"),
        ("'a'", "string 'a'"),
        ("lambda: 1", "lambda 'lambda: 1'"),
        ("__import__('os').system('echo hi')", "call '__import__('os').system('echo hi')'"),
        ("__class__", "name '__class__'"),
        ("_x", "name '_x'"),
        ("foo(x)", "unknown function 'foo'"),
        ("x if x else 1", "conditional expression 'x if x else 1'"),
        ("x // 2", "operator '//'"),
        ("x % 2", "operator '%'"),
        ("x < 1", "comparison 'x < 1'"),
        ("sin(x=1)", "keyword argument 'x=1'"),
        ("sin(*x)", "starred argument '*x'"),
        ("sin(x, x)", "sin() takes 1 argument, got 2"),
        ("(sin)(x)", "call '(sin)(x)'"),
        ("sin(x)(x)", "call 'sin(x)(x)'"),
        ("[x]", "list '[x]'"),
        ("{}", "dict '{}'"),
        ("sin + 1", "function 'sin' used as a value"),
        ("pi(x)", "'pi' is a constant"),
        ("w * x + nan", "'nan' is no constant here (only pi, e)"),
        ("x**2 + Inf", "'Inf' is no constant here"),
        ("True", "boolean 'True'"),
        ("1j", "complex number '1j'"),
        ("", "empty"),
        ("w * * x", "syntax error at column 5"),
        ("(" * 10000, "syntax error"),
        ("-" * 100000 + "1", "too long"),
        ("-" * 5000 + "1", "nested too deeply"),
        ("x+" * 300 + "x", "nested too deeply: more than 200 levels"),
        ("\ud800", "cannot be parsed"),
    ],
)
def test_refused(source, piece):
    with pytest.raises(FormulaError) as info:
        parse(source)
    assert piece in str(info.value)
    assert str(info.value).startswith("formula ")


def test_refusal_lists_what_is_allowed():
    with pytest.raises(FormulaError, match="allowed: numbers, names, .* calls to sin, cos"):
        parse("x.real + 1")


def test_non_string_is_refused():
    with pytest.raises(FormulaError, match="must be a string, got int"):
        parse(3)


# --- rendering -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "values", "text"),
    [
        ("w * x + b", {"w": 1.9238, "b": 1.0503}, "1.924x + 1.050"),
        ("w * x + b", {"w": 2.0, "b": -0.5}, "2.000x - 0.500"),
        ("w * x + b", {"w": -2.0, "b": 0.5}, "-2.000x + 0.500"),
        ("b - w * x", {"w": -2.0, "b": 1.0}, "1.000 + 2.000x"),
        ("a * x**2 + b * x + c", {"a": 1, "b": 2, "c": 3}, "1.000x**2 + 2.000x + 3.000"),
        ("sin(x) * w", {"w": 0.5}, "sin(x) * 0.500"),
        ("w * x + b", {}, "w * x + b"),
        ("2*x + 1", {}, "2 * x + 1"),
        ("1e-3 * w", {"w": 4}, "1e-3 * 4.000"),
        ("w ** 2", {"w": -0.5}, "(-0.500)**2"),
        ("x ** w", {"w": -0.5}, "x**(-0.500)"),
        ("-(w * x)", {"w": 2}, "-(2.000x)"),
        ("(w * x)**2", {"w": 2}, "(2.000x)**2"),
        ("w * (x + b)", {"w": 2, "b": 1}, "2.000 * (x + 1.000)"),
        ("w * x + b", {"w": float("nan"), "b": float("-inf")}, "nan * x - inf"),  # diverged
        ("w * x + b", {"w": 5.5e20, "b": -1.2e7}, "5.5e+20 * x - 1.2e+07"),
        (
            "(1 - a)**2 + 100*(b - a**2)**2",
            {"a": 1, "b": 1},
            "(1 - 1.000)**2 + 100 * (1.000 - 1.000**2)**2",
        ),
    ],
)
def test_render(source, values, text):
    assert parse(source).render(values) == text


def test_render_several_inputs():
    f = parse("w1 * x1 + w2 * x2")
    assert f.render({"w1": 1, "w2": 2}, inputs=("x1", "x2")) == "1.000x1 + 2.000x2"


# --- fuzzing ---------------------------------------------------------------------------------

NAMES = ["x", "y", "w", "b"]
numbers = st.one_of(
    st.integers(0, 9).map(str),
    st.floats(0, 10, allow_nan=False).map(repr),
    st.sampled_from(list(CONSTANTS)),
)
leaves = st.one_of(st.sampled_from(NAMES), numbers)


def grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        # no parentheses around operands, so precedence is exercised too
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**"]), inner).map(" ".join),
        inner.map(lambda s: f"({s})"),
        inner.map(lambda s: f"-{s}"),
        st.tuples(st.sampled_from(list(FUNCTIONS)), inner).map(lambda t: f"{t[0]}({t[1]})"),
    )


expressions = st.recursive(leaves, grow, max_leaves=12)
FORBIDDEN = [
    "{}.real",
    "{}[0]",
    "{} // 2",
    "{} % 2",
    "{} @ {}",
    "{} << 1",
    "~{}",
    "not {}",
    "{} < 1",
    "{} and {}",
    "{} if {} else 1",
    "lambda: {}",
    "[{}]",
    "{{{}: 1}}",
    "foo({})",
    "sin({}, x)",
    "sin(x={})",
    "sin(*{})",
    "(sin)({})",
    "sin({})(x)",
    "pi({})",
    "sin + {}",
    "'s' * {}",
    "True * {}",
    "1j * {}",
    "_x * {}",
    "__import__('os').system({})",
    "{}.__class__",
    "[c for c in {}]",
    "f'{{{}}}'",
    "(y := {})",
]


@st.composite
def forbidden_expressions(draw) -> str:
    piece = draw(st.sampled_from(FORBIDDEN)).format(*[draw(expressions)] * 2)
    outer = draw(expressions)
    return draw(st.sampled_from([f"{outer} + ({piece})", f"sin({piece}) * {outer}", piece]))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode(errors="replace"))))
def test_fuzz_any_text_parses_or_raises_formula_error(source):
    with contextlib.suppress(FormulaError):
        assert isinstance(parse(source), Formula)


@settings(max_examples=500, deadline=None)
@given(expressions, st.lists(st.floats(-3, 3), min_size=3, max_size=3))
def test_fuzz_whitelisted_expressions_parse_and_evaluate(source, data):
    f = parse(source)
    assert f.names <= set(NAMES)
    env = {name: torch.tensor(data, dtype=torch.float64) * (i + 1) for i, name in enumerate(NAMES)}
    try:
        result = f(env)
    except FormulaError:
        return  # e.g. 1/0 or an overflow in plain numbers
    assert isinstance(result, torch.Tensor | int | float)
    # rendering keeps the meaning: fill in exact values, parse the text back, same result
    values = {"w": 0.5, "b": -0.25}
    rendered = parse(f.render(values, inputs=()))
    env |= values
    try:
        expected = f(env)
    except FormulaError:  # plain numbers now, e.g. 0 ** b
        with pytest.raises(FormulaError):
            rendered(env)
        return
    again = rendered(env)
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(again, expected, rtol=0, atol=0, equal_nan=True)
    else:
        assert again == expected or (math.isnan(again) and math.isnan(expected))


@settings(max_examples=500, deadline=None)
@given(forbidden_expressions())
def test_fuzz_forbidden_pieces_are_refused(source):
    with pytest.raises(FormulaError):
        parse(source)


# --- no code runs ----------------------------------------------------------------------------


def test_module_never_calls_eval_exec_compile_or_import():
    tree = ast.parse(Path(formula.__file__).read_text())
    forbidden = {"eval", "exec", "compile", "__import__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            assert name not in forbidden, ast.unparse(node)


PAYLOADS = [
    "__import__('os').system('touch {p}')",
    "x + __import__('os').system('touch {p}')",
    "sin(__import__('os').system('touch {p}'))",
    "(lambda: __import__('os').system('touch {p}'))()",
    "open('{p}', 'w')",
    "exec(\"open('{p}', 'w')\")",
    "eval(\"open('{p}', 'w')\")",
    "compile(\"open('{p}', 'w')\", 'f', 'exec')",
    "().__class__.__base__.__subclasses__()",
    "getattr(x, '__class__')",
    "breakpoint()",
]


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("formula") / "SENTINEL"


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(PAYLOADS),
    expressions,
    st.sampled_from(["{p}", "{o} + {p}", "sin({p}) * ({o})", "({o}) ** -({p})"]),
)
def test_fuzz_payloads_never_run(sentinel, payload, outer, wrapper):
    source = wrapper.format(p=payload.format(p=sentinel), o=outer)
    with pytest.raises(FormulaError):
        parse(source)({"x": torch.ones(3), "w": 1.0})
    assert not sentinel.exists()

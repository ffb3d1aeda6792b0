"""Graph walk checked against graphs counted by hand, micrograd style."""

import torch
from torch import nn

from runner.observe.graph import (
    graph_chain,
    graph_dot,
    graph_stats,
    graph_tree,
    nodes,
    saved_bytes,
)


def names_of(root):
    """Each node's type name, in `nodes` order."""
    return [type(n).__name__ for n in nodes(root)]


def post_loss(n: int = 5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The post's loss: ((w * x + b - y) ** 2).mean() with scalar leaves w, b."""
    w = torch.tensor(0.5, requires_grad=True)
    b = torch.tensor(0.1, requires_grad=True)
    x, y = torch.randn(n), torch.randn(n)
    return ((w * x + b - y) ** 2).mean(), {"w": w, "b": b}


POST_CHAIN = (
    "MeanBackward0 → PowBackward0 → SubBackward0 → AddBackward0 → "
    "(MulBackward0 → AccumulateGrad (w)), AccumulateGrad (b)"
)
POST_TREE = """\
MeanBackward0
└── PowBackward0
    └── SubBackward0
        └── AddBackward0
            ├── MulBackward0
            │   └── AccumulateGrad (w)
            └── AccumulateGrad (b)"""


def test_post_graph_stats():
    loss, _ = post_loss()
    assert graph_stats(loss) == {
        "graph/nodes": 7.0,
        "graph/leaves": 2.0,
        "graph/depth": 6.0,  # Mean, Pow, Sub, Add, Mul, AccumulateGrad
        "graph/op/AccumulateGrad": 2.0,
        "graph/op/AddBackward0": 1.0,
        "graph/op/MeanBackward0": 1.0,
        "graph/op/MulBackward0": 1.0,
        "graph/op/PowBackward0": 1.0,
        "graph/op/SubBackward0": 1.0,
    }
    assert graph_stats(loss.grad_fn) == graph_stats(loss)  # a node works as the root too


def test_post_graph_text():
    loss, names = post_loss()
    assert graph_chain(loss, names) == POST_CHAIN
    assert graph_tree(loss, names) == POST_TREE
    assert names_of(loss) == [
        "MeanBackward0",
        "PowBackward0",
        "SubBackward0",
        "AddBackward0",
        "MulBackward0",
        "AccumulateGrad",
        "AccumulateGrad",
    ]


def test_unnamed_leaves_keep_the_type_name():
    loss, names = post_loss()
    assert graph_chain(loss, {"w": names["w"]}).endswith("AccumulateGrad (w)), AccumulateGrad")
    assert graph_tree(loss).splitlines()[-1] == "            └── AccumulateGrad"


def test_affine_of_one_leaf():
    a = torch.tensor(2.0, requires_grad=True)
    out = a * 3 + 1
    stats = graph_stats(out)
    assert (stats["graph/nodes"], stats["graph/leaves"], stats["graph/depth"]) == (
        3,
        1,
        3,
    )
    assert graph_chain(out, {"a": a}) == "AddBackward0 → MulBackward0 → AccumulateGrad (a)"


def test_shared_subexpression_counted_once():
    w = torch.tensor(2.0, requires_grad=True)
    h = w * torch.randn(3)
    loss = (h + h).sum()
    stats = graph_stats(loss)
    assert stats["graph/nodes"] == 4  # Sum, Add, Mul, AccumulateGrad: Mul only once
    assert stats["graph/op/MulBackward0"] == 1
    assert stats["graph/depth"] == 4
    assert names_of(loss) == [
        "SumBackward0",
        "AddBackward0",
        "MulBackward0",
        "AccumulateGrad",
    ]
    assert graph_tree(loss, {"w": w}) == (
        "SumBackward0\n"
        "└── AddBackward0\n"
        "    ├── MulBackward0\n"
        "    │   └── AccumulateGrad (w)\n"
        "    └── MulBackward0 (see above)"
    )
    assert graph_chain(loss, {"w": w}) == (
        "SumBackward0 → AddBackward0 → (MulBackward0 → AccumulateGrad (w)), "
        "MulBackward0 (see above)"
    )


def test_no_graph():
    w = torch.tensor(2.0, requires_grad=True)
    for root in (w, (w * 2).detach(), torch.ones(3), None):
        assert graph_stats(root) == {
            "graph/nodes": 0.0,
            "graph/leaves": 0.0,
            "graph/depth": 0.0,
        }
        assert names_of(root) == []
        assert "no autograd graph" in graph_tree(root)
        assert "no autograd graph" in graph_chain(root)
        assert graph_dot(root).startswith("digraph") and "->" not in graph_dot(root)


def test_mlp_leaves_and_dot_edges():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    loss = mlp(torch.randn(8, 3)).pow(2).mean()
    names = dict(mlp.named_parameters())
    assert graph_stats(loss)["graph/leaves"] == len(names) == 4

    dot = graph_dot(loss, names)
    assert dot.startswith("digraph")
    assert dot.rstrip().endswith("}")
    # count the edges by hand over the real graph: every non-None input is one edge
    seen, stack, edges = set(), [loss.grad_fn], 0
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        inputs = [child for child, _ in node.next_functions if child is not None]
        edges += len(inputs)
        stack += inputs
    assert dot.count("->") == edges
    assert dot.count("[label=") == len(seen) == graph_stats(loss)["graph/nodes"]
    for name in names:
        assert f'label="{name}\\n(AccumulateGrad)", shape=ellipse' in dot


def test_tree_is_capped():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    loss = mlp(torch.randn(8, 3)).pow(2).mean()
    full = graph_tree(loss).splitlines()
    capped = graph_tree(loss, max_lines=3).splitlines()
    assert capped[:3] == full[:3]
    assert capped[3] == f"... ({len(full) - 3} more nodes)"
    assert len(capped) == 4


def test_saved_bytes_linear_in_n():
    def measure(n: int) -> int:
        with saved_bytes() as saved:
            post_loss(n)
        return saved.total

    b100, b200, b400 = measure(100), measure(200), measure(400)
    assert b100 > 0
    assert b400 - b200 == 2 * (b200 - b100)


def test_saved_bytes_counts_a_tensor_saved_twice_once():
    x = torch.randn(100, requires_grad=True)
    with saved_bytes() as saved:
        x * x  # mul saves both operands: the same tensor
    assert saved.total == 100 * 4


def test_deep_chain_is_walked_iteratively():
    x0 = torch.tensor(1.0, requires_grad=True)
    x = x0
    for _ in range(5000):
        x = x * 1.0001
    stats = graph_stats(x)
    assert (stats["graph/nodes"], stats["graph/depth"], stats["graph/leaves"]) == (
        5001,
        5001,
        1,
    )
    assert len(names_of(x)) == 5001
    assert graph_chain(x, {"x0": x0}).count(" → ") == 5000
    assert graph_tree(x).endswith("... (4801 more nodes)")
    a, h = torch.tensor(0.5, requires_grad=True), torch.tensor(1.0)
    for _ in range(1000):  # an unrolled recurrence: `a` reached from every step
        h = h * 0.9 + a * 0.1
    total = int(graph_stats(h)["graph/nodes"])  # 3 a step but the first's 2, and `a`'s leaf
    tree = graph_tree(h).splitlines()
    shown = sum(1 for line in tree[:-1] if "(see above)" not in line)
    assert total == 3000 and tree[-1] == f"... ({total - shown} more nodes)"
    leaf = torch.tensor(1.0, requires_grad=True)
    sums = sum([leaf] * 150)  # 149 adds in a chain, each with x beside it: repeats past line 200
    full = graph_tree(sums, max_lines=10**6).splitlines()
    cut = graph_tree(sums).splitlines()
    assert cut[-1] == f"... ({len(full) - 200} more lines, of nodes shown above)"
    assert graph_dot(x).count("->") == 5000

"""dataset.task: classification is declared by the dataset, never guessed from the loss."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config, scalars

from runner.build import build
from runner.build.data import Data
from runner.config.check import ConfigError
from runner.observe import draw
from runner.observe.scalars import accuracy_fn

TORCH_CE = "loss._target_=torch.nn.functional.cross_entropy"


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(draw, "available", lambda: False)


def test_torchs_own_cross_entropy_builds_and_its_loss_computes(tmp_path: Path):
    b = build(compose_config("experiment=mlp_classify", TORCH_CE, "logger=none"), tmp_path)
    assert b.data.task == "classification" and b.data.classes == 3
    assert b.data.y.dtype == b.data.y_val.dtype == torch.long
    logits = b.forward(b.data.x)
    assert logits.shape == (b.data.n, 3)
    # the same number as torch computes by hand from the log-softmax of the right class
    expected = -torch.log_softmax(logits, -1).gather(1, b.data.y[:, None]).mean()
    assert b.loss_on(None).item() == pytest.approx(expected.item(), rel=1e-6)
    assert accuracy_fn(b) is not None


def test_a_loss_module_class_is_made_then_called_with_its_options(tmp_path: Path):
    """`loss._target_=torch.nn.CrossEntropyLoss` under the option's `_partial_: true`: made
    with the option's keys, then called as loss(pred, y) (it was made from pred and y)."""
    module = ["loss._target_=torch.nn.CrossEntropyLoss", "+loss.label_smoothing=0.1"]
    b = build(compose_config("experiment=mlp_classify", *module, "logger=none"), tmp_path)
    logits = b.forward(b.data.x)
    expected = torch.nn.functional.cross_entropy(logits, b.data.y, label_smoothing=0.1)
    assert b.loss_on(None).item() == pytest.approx(expected.item(), rel=1e-6)


def test_torchs_own_cross_entropy_trains_and_logs_accuracy(tmp_path: Path, no_figures):
    from runner.run import run

    run_dir = tmp_path / "r"
    cfg = compose_config("experiment=mlp_classify", TORCH_CE, "trainer.epochs=3")
    metrics = run(cfg, run_dir)
    assert metrics["status"] == "completed"
    acc = scalars(run_dir, "acc/train")
    assert acc and acc[-1][1] > 0.7  # three classes: chance is 1/3
    assert scalars(run_dir, "acc/val")


def test_bce_takes_the_integer_labels_of_a_binary_logit(tmp_path: Path):
    b = build(compose_config("experiment=logistic_blobs", "logger=none"), tmp_path)
    assert b.data.y.dtype == torch.long and b.data.classes == 2
    logit = b.forward(b.data.x)
    assert logit.shape == (b.data.n,)
    p = torch.sigmoid(logit)
    y = b.data.y.float()
    expected = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert b.loss_on(None).item() == pytest.approx(expected.item(), rel=1e-5)


class Probabilities(torch.nn.Module):
    """One sigmoid output a point: a probability, where accuracy reads a logit."""

    def __init__(self, in_features: int = 2, out_features: int = 1) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


def test_a_one_output_classifier_of_probabilities_is_warned_of(tmp_path: Path, caplog):
    """Its accuracy would be the share of class 1 (every probability is above 0)."""
    told = "acc/train and acc/val read it as a logit (class 1 when above 0)"
    with caplog.at_level("WARNING"):
        build(compose_config("experiment=logistic_blobs", "logger=none"), tmp_path)
        assert told not in caplog.text  # a logit model, at any start
        mine = ["model._target_=test_task.Probabilities", "logger=none"]
        build(compose_config("experiment=logistic_blobs", *mine), tmp_path)
    assert (
        "lies between 0 and 1 for all of the first 160 points" in caplog.text
        and told in caplog.text
    )


def test_mse_keeps_the_posts_graph_for_regression(tmp_path: Path):
    b = build(compose_config("experiment=linear_fit", "logger=none"), tmp_path)
    assert b.data.task == "regression" and b.data.y.dtype == torch.float32
    assert accuracy_fn(b) is None
    assert type(b.loss_on(None).grad_fn).__name__ == "MeanBackward0"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("experiment=mlp_classify", "model.out_features=2"),
            r"has 3 classes; set model\.out_features=3 \(one logit per class\)$",
        ),
        (
            ("experiment=logistic_blobs", "model.out_features=3"),
            r"has 2 classes; set model\.out_features=2 .* or model\.out_features=1 ",
        ),
    ],
    ids=["three_classes", "two_classes"],
)
def test_a_width_that_does_not_fit_the_classes_is_one_config_line(
    tmp_path: Path, overrides: tuple[str, ...], message: str
):
    with pytest.raises(ConfigError, match=message) as info:
        build(compose_config(*overrides, "logger=none"), tmp_path)
    assert "\n" not in str(info.value)


def write_csv(path: Path, labels: list[str]) -> Path:
    path.write_text("a,label\n" + "".join(f"{i * 0.5},{c}\n" for i, c in enumerate(labels)))
    return path


def test_csv_classification_reads_integer_labels(tmp_path: Path):
    csv = write_csv(tmp_path / "c.csv", ["0", "2", "1", "2", "0", "1"])
    common = ("dataset=csv", f"dataset.path={csv}", "dataset.x=a", "dataset.y=label")
    b = build(
        compose_config(
            *common,
            "dataset.task=classification",
            "model=linear",
            "model.out_features=3",
            "loss=cross_entropy",
            "logger=none",
        ),
        tmp_path,
    )
    assert b.data.y.dtype == torch.long
    assert b.data.y.tolist() == [0, 2, 1, 2, 0, 1]
    assert b.data.classes == 3  # the largest label + 1
    # the same file as a regression target stays float, as every regression target
    regression = build(compose_config(*common, "model=linear", "logger=none"), tmp_path)
    assert regression.data.task == "regression"
    assert regression.data.y.dtype == torch.float32


def test_csv_with_another_delimiter_reads_the_same_numbers(tmp_path: Path):
    (tmp_path / "comma.csv").write_text("a,b,label\n0.5,1,2\n1.5,-2,3\n")
    (tmp_path / "semi.csv").write_text("a;b;label\n0.5;1;2\n1.5;-2;3\n")
    tables = []
    (tmp_path / "tab.csv").write_text("a\tb\tlabel\n0.5\t1\t2\n1.5\t-2\t3\n")
    delimiters = [("comma", []), ("semi", ['dataset.delimiter=";"'])]
    delimiters += [("tab", ['dataset.delimiter="\\t"'])]  # as typed: a backslash and a t
    for name, more in delimiters:
        common = ["dataset=csv", f"dataset.path={tmp_path / name}.csv", "dataset.x=[a,b]"]
        cfg = compose_config(*common, "dataset.y=label", "model=linear", "logger=none", *more)
        data = build(cfg, tmp_path).data
        tables.append((data.x.tolist(), data.y.tolist()))
    assert tables[0] == tables[1] == tables[2] == ([[0.5, 1.0], [1.5, -2.0]], [2.0, 3.0])


@pytest.mark.parametrize(
    "labels, told",
    [
        (["1", "2", "1"], "they run from 1 to 2, and no point is class 0; number the classes"),
        (["-1", "1", "1"], "but one is -1.0; number the classes from 0 (-1 and 1 as 0 and 1)"),
    ],
)
def test_labels_not_numbered_from_0_are_refused_as_such(tmp_path: Path, labels, told):
    """Not as a model width to change ("has 3 classes; set model.out_features=3")."""
    from runner.build.data import csv

    with pytest.raises(ConfigError, match=re.escape(told)):
        csv(str(write_csv(tmp_path / "c.csv", labels)), x="a", y="label", task="classification")


def test_csv_blank_lines_before_the_header_are_skipped(tmp_path: Path):
    from runner.build.data import csv

    (tmp_path / "c.csv").write_text("\n \na,label\n0.5,1\n\n1.5,2\n")
    data = csv(str(tmp_path / "c.csv"), x="a", y="label")
    assert (data.x.tolist(), data.y.tolist()) == ([0.5, 1.5], [1.0, 2.0])


@pytest.mark.parametrize(
    "content, told",
    [
        (b"0,10\n1,3\n2,5\n", "its first row (0, 10) is numbers, and the first row is read as"),
        (b"x,temp\xe9rature\n1,2\n", "is not UTF-8 text (it has the byte 0xe9); save it as UTF-8"),
    ],
)
def test_csv_without_a_header_or_not_in_utf8_is_one_line(tmp_path: Path, content, told):
    """A header-less file lost its first row of data to the header; latin-1 gave a codec error."""
    from runner.build.data import csv

    (tmp_path / "c.csv").write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(told)):
        csv(str(tmp_path / "c.csv"), x="0", y="10")


@pytest.mark.parametrize(
    "cell, task, told",
    [
        ("1_000", "regression", "'1_000' is not a finite number"),
        ("1.00000001", "classification", "'1.00000001' is no class index 0, 1, 2, ..."),
    ],
)
def test_csv_cells_are_read_as_written(tmp_path: Path, cell, task, told):
    """Python's float() reads `1_000` as 1000, and float32 rounds 1.00000001 to class 1."""
    from runner.build.data import csv

    (tmp_path / "c.csv").write_text(f"a,b\n0,0\n1,{cell}\n")
    with pytest.raises(ConfigError, match=re.escape(f"line 3, column b: {told}")):
        csv(str(tmp_path / "c.csv"), x="a", y="b", task=task)


def test_data_whose_squares_overflow_is_told_to_be_rescaled(tmp_path: Path):
    """3e20 fits float32, but the squared error does not: not the formulas' fault. The one
    line comes alone, with no warning of torch's before it."""
    (tmp_path / "c.csv").write_text("a,b\n0,1\n1,3e20\n2,5\n")
    args = ("dataset=csv", f"dataset.path={tmp_path / 'c.csv'}", "dataset.x=a", "dataset.y=b")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            ConfigError, match="reach 3e\\+20, whose squares overflow torch.float32"
        ):
            build(compose_config(*args, "logger=none"), tmp_path)
    assert [str(w.message) for w in caught if w.filename.endswith("checks.py")] == []


def test_csv_unnamed_trailing_columns_are_left_alone(tmp_path: Path):
    """A spreadsheet's empty columns at the right have no names: not "the header names  twice"."""
    from runner.build.data import csv

    (tmp_path / "c.csv").write_text("x,y,,\n0,1,,\n1,3,,\n")
    data = csv(str(tmp_path / "c.csv"))
    assert (data.x.tolist(), data.y.tolist()) == ([0.0, 1.0], [1.0, 3.0])


def test_csv_a_number_beyond_float32_names_its_column_and_float64(tmp_path: Path):
    from runner.build.data import csv

    (tmp_path / "c.csv").write_text("a,label\n0.5,1\n1.5,1e39\n")
    with pytest.raises(ConfigError, match=r"column label: 1e\+39 is beyond torch.float32"):
        csv(str(tmp_path / "c.csv"), x="a", y="label")
    data = csv(str(tmp_path / "c.csv"), x="a", y="label", dtype=torch.float64)
    assert data.y.tolist() == [1.0, 1e39]


def test_csv_classification_refuses_a_label_that_is_no_class_index(tmp_path: Path):
    csv = write_csv(tmp_path / "c.csv", ["0", "1.5", "1"])
    with pytest.raises(ConfigError, match=r"line 3, column label: '1\.5' is no class index 0"):
        build(
            compose_config(
                "dataset=csv",
                f"dataset.path={csv}",
                "dataset.x=a",
                "dataset.y=label",
                "dataset.task=classification",
                "model=linear",
                "loss=bce",
                "logger=none",
            ),
            tmp_path,
        )


def test_an_unknown_task_is_refused(tmp_path: Path):
    with pytest.raises(
        ConfigError,
        match=r"dataset\.task='clasification' is not allowed; use regression or classification",
    ):
        build(compose_config("experiment=mlp_classify", "dataset.task=clasification"), tmp_path)


def test_a_user_dataset_declares_the_task_itself():
    d = Data(torch.zeros(4), torch.tensor([0.0, 1.0, 1.0, 0.0]), task="classification")
    assert d.y.dtype == torch.long and d.classes == 2
    with pytest.raises(ConfigError, match="dataset.task='labels' is not allowed"):
        Data(torch.zeros(2), torch.zeros(2), task="labels")


def fake_built(y: list[int]) -> SimpleNamespace:
    """Just what accuracy_fn reads: the data and a forward."""
    data = Data(torch.zeros(len(y)), torch.tensor(y), task="classification", classes=3)
    return SimpleNamespace(data=data, forward=lambda x: x)


def test_accuracy_of_one_binary_logit_a_point():
    acc = accuracy_fn(fake_built([1, 1, 0, 0, 1]))
    logits = torch.tensor([2.0, -1.0, 0.5, -0.2, 0.1])  # guesses 1, 0, 1, 0, 1
    assert acc(logits, torch.tensor([1, 1, 0, 0, 1])).item() == pytest.approx(3 / 5)


def test_accuracy_of_class_logits():
    acc = accuracy_fn(fake_built([0, 1, 2, 2]))
    logits = torch.tensor(
        [[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [0.1, 0.2, 0.3], [9.0, 0.0, 1.0]]
    )  # guesses 0, 2, 2, 0
    assert acc(logits, torch.tensor([0, 1, 2, 2])).item() == pytest.approx(2 / 4)


def test_no_accuracy_for_regression():
    data = Data(torch.zeros(3), torch.tensor([0.0, 1.0, 2.0]))
    assert accuracy_fn(SimpleNamespace(data=data, forward=lambda x: x)) is None

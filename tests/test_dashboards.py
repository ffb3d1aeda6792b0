"""What a person sees in TensorBoard: runs of the runner read through a real server's HTTP
API (`tb_server.py`), the API its dashboards read, which is stricter than reading the files
(one kind of data per tag; steps that go backwards are purged)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cli, compose_config, event_accumulator, read_metrics
from tb_server import Server, tensorboard, wait_for

from runner.__main__ import CONFIGS
from runner.run import run

PLUGINS = ("scalars", "histograms", "images", "text")  # the dashboards that list tags
MLP = (  # 52 steps; scalars every 5, histograms every 10, both at the last step
    "experiment=sine_mlp",
    "model.hidden=[8,8]",  # 97 elements: metrics.json lists the final values to compare
    "trainer.epochs=4",
    "trainer.log_every_n_steps=5",
    "logger.histogram_every_n_steps=10",
)
DIVERGED = ("experiment=linear_fit", "optimizer.lr=100", "trainer.epochs=20")
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
LRS, SEEDS = ("0.01", "0.1"), ("1", "2")
GRID = [f"optimizer.lr={lr},seed={seed}" for lr, seed in itertools.product(LRS, SEEDS)]


def brief(name: str) -> list[str]:
    """A shipped experiment, run for 2 epochs (one pass and no update where it has none)."""
    epochs = compose_config(f"experiment={name}").trainer.epochs
    return [f"experiment={name}", *(["trainer.epochs=2"] if epochs > 0 else [])]


def logged_run(run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """One run in this process, its overrides given as the command line would give them."""
    return run(compose_config(*overrides), run_dir, list(overrides))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, dict]]:
    """One server over an MLP run, a diverged run and a brief run of every shipped experiment:
    (server, its logdir, {run name: metrics})."""
    root = tmp_path_factory.mktemp("site")
    runs = {"mlp": logged_run(root / "mlp", MLP)}
    runs["diverged"] = logged_run(root / "diverged", DIVERGED)
    for name in EXPERIMENTS:
        runs[f"experiment/{name}"] = logged_run(root / "experiment" / name, brief(name))
    with tensorboard(root) as tb:
        yield tb, root, runs


def steps(points: Sequence[tuple[int, Any]]) -> list[int]:
    return [step for step, _ in points]


def one_number(values: Any) -> float:
    """What `param/<name>` holds: the value of a one-element tensor, the L2 norm of a larger one."""
    t = torch.tensor(values, dtype=torch.float64)
    return t.item() if t.numel() == 1 else torch.linalg.vector_norm(t).item()


@pytest.mark.slow
def test_mlp_every_tensor_parameter_has_its_norms_and_histograms_over_the_whole_run(site):
    tb, _, runs = site
    metrics = runs["mlp"]
    last = metrics["steps"] - 1
    log_steps = [s for s in range(last + 1) if s % 5 == 0 or s == last]
    histogram_steps = [s for s in log_steps if s % 10 == 0 or s == last]
    tags = {plugin: set(tb.tags(plugin).get("mlp", [])) for plugin in PLUGINS}
    for a, b in itertools.combinations(PLUGINS, 2):
        assert not tags[a] & tags[b], f"tags under both {a} and {b}"  # one kind of data per tag
    tensors = 0
    for kind, values in (("param", metrics["params"]), ("grad", metrics["grads"])):
        assert set(values) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
        for name, final in values.items():
            points = tb.scalars("mlp", f"{kind}/{name}")
            assert steps(points) == log_steps, f"{kind}/{name}"  # every log step, none dropped
            assert points[-1][1] == pytest.approx(one_number(final), rel=1e-5)
            flat = torch.tensor(final, dtype=torch.float64).flatten()
            if flat.numel() == 1:  # a scalar: its value is the whole story
                assert f"{kind}_hist/{name}" not in tags["histograms"]
                continue
            tensors += 1
            histograms = tb.histograms("mlp", f"{kind}_hist/{name}")
            assert steps(histograms) == histogram_steps, f"{kind}_hist/{name}"
            for _, buckets in histograms:  # every element counted once
                assert sum(count for _, _, count in buckets) == flat.numel()
            buckets = histograms[-1][1]  # the last one spans the final values
            assert buckets[0][0] == pytest.approx(flat.min().item(), rel=1e-5, abs=1e-7)
            assert buckets[-1][1] == pytest.approx(flat.max().item(), rel=1e-5, abs=1e-7)
    assert tensors == 2 * 5  # 4.bias is one number: no histogram
    for tag in tags["scalars"]:  # every tag in step order, within the run
        logged = steps(tb.scalars("mlp", tag))
        assert logged == sorted(set(logged)) and logged[0] >= 0 and logged[-1] <= last, tag
        if tag.startswith("hparam/"):  # the HParams metrics: once, at the last step
            assert logged == [last], tag
    for tag in tags["histograms"]:
        logged = steps(tb.histograms("mlp", tag))
        assert logged == sorted(set(logged)), tag


@pytest.mark.slow
def test_a_diverged_run_is_a_failed_hparams_session(site):
    tb, _, runs = site
    assert runs["diverged"]["status"] == "diverged"
    sessions = {s["name"]: s for g in tb.session_groups() for s in g["sessions"]}
    assert sessions["diverged"]["status"] == "STATUS_FAILURE"
    final = {m["name"]["tag"]: m["value"] for m in sessions["diverged"]["metricValues"]}
    assert math.isnan(float(final["hparam/final_loss"]))  # a loss it never reached
    assert "hparam/val_loss" not in final  # no validation split: no column, diverged or not
    assert sessions["mlp"]["status"] == "STATUS_SUCCESS"


@pytest.mark.slow
def test_a_classifiers_hparams_row_has_its_final_accuracies(site):
    """`hparam/acc` and `hparam/val_acc`: HParams metric columns of a classifier's own
    experiment, at its last step, equal to its last `acc/train` and `acc/val`."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    tb, root, runs = site
    name = "experiment/mlp_classify"
    content = event_accumulator(root / name).SummaryMetadata("_hparams_/experiment")
    data = plugin_data_pb2.HParamsPluginData.FromString(content.plugin_data.content)
    columns = [m.name.tag for m in data.experiment.metric_infos]
    assert columns[-2:] == ["hparam/acc", "hparam/val_acc"]
    for tag, key in (("acc/train", "acc"), ("acc/val", "val_acc")):
        last_step, last_value = tb.scalars(name, tag)[-1]
        assert tb.scalars(name, f"hparam/{key}") == [(last_step, pytest.approx(last_value))]
        assert runs[name][key] == pytest.approx(last_value)
    assert "acc" not in runs["mlp"] and "hparam/acc" not in tb.tags("scalars")["mlp"]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_custom_scalars_chart_of_a_shipped_experiment_shows_a_tag(site, name):
    """Each chart asks the server for the run's scalar tags its regexes match (TensorBoard's
    `re.match`); a chart that matches none is an empty box on the dashboard."""
    tb, root, _ = site
    run_name = f"experiment/{name}"
    charts = layout(tb, root, run_name)
    assert charts, f"{name} wrote no Custom Scalars layout"
    written = set(tb.tags("scalars")[run_name])
    for title, regexes in charts.items():
        shown = set()
        for regex in regexes:
            answer = tb.get("plugin/custom_scalars/scalars", run=run_name, tag=regex)
            assert answer["regex_valid"], f"{title}: {regex}"
            shown |= set(answer["tag_to_events"])
        assert shown, f"{name}: the chart {title!r} ({regexes}) matches none of {sorted(written)}"
        assert shown <= written


def layout(tb: Server, root: Path, run_name: str) -> dict[str, list[str]]:
    """{chart title: tag regexes} of the one run: the server only serves every run's layout
    merged, so the run's own is read from its file, as the server reads it."""
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    tensors = event_accumulator(root / run_name).Tensors(metadata.CONFIG_SUMMARY_TAG)
    proto = layout_pb2.Layout.FromString(tensors[0].tensor_proto.string_val[0])
    served = {c["title"] for c in tb.layout()["category"]}
    assert {c.title for c in proto.category} <= served  # and the server shows it
    return {
        f"{category.title}/{chart.title}": list(chart.multiline.tag)
        for category in proto.category
        for chart in category.chart
    }


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A 4-job sweep through the command line, in TensorBoard as a user opens it: its own
    directory (HParams shows one experiment per logdir), the default (fast) loader."""
    tmp = tmp_path_factory.mktemp("grid")
    sweep_dir = tmp / "sweep"
    args = ("-m", "experiment=linear_fit", "optimizer.lr=0.01,0.1", "seed=1,2", "trainer.epochs=5")
    done = cli(*args, f"hydra.sweep.dir={sweep_dir}", cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    with tensorboard(sweep_dir, load_fast=True) as tb:
        wait_for(tb.session_groups, four_rows, timeout=60)  # it loads in the background
        yield tb, sweep_dir


def four_rows(groups: list[dict[str, Any]]) -> bool:
    """Every job's HParams row, with its two metrics."""
    return len(groups) == 4 and all(len(g["metricValues"]) == 2 for g in groups)


@pytest.mark.slow
def test_a_sweep_is_one_hparams_row_per_job_named_by_what_it_varied(grid):
    tb, sweep_dir = grid
    names = [f"{job}_{overrides}" for job, overrides in enumerate(GRID)]
    assert sorted(tb.runs()) == names  # the run list reads as the grid
    experiment = tb.hparams_experiment()
    columns = {h["name"]: h["type"] for h in experiment["hparamInfos"]}
    # the swept keys, and what the command line set for every job
    assert columns == {
        "optimizer.lr": "DATA_TYPE_FLOAT64",
        "seed": "DATA_TYPE_FLOAT64",
        "experiment": "DATA_TYPE_STRING",
        "trainer.epochs": "DATA_TYPE_FLOAT64",
    }
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    hparam_tags = {t for tags in tb.tags("scalars").values() for t in tags if "hparam/" in t}
    assert metrics == hparam_tags == {"hparam/final_loss", "hparam/best_loss"}
    groups = {g["name"]: g for g in tb.session_groups()}
    assert sorted(groups) == names
    for name, (lr, seed) in zip(names, itertools.product(LRS, SEEDS), strict=True):
        group, outcome = groups[name], read_metrics(sweep_dir / name)
        assert [s["name"] for s in group["sessions"]] == [name]
        assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
        assert group["hparams"] == {
            "experiment": "linear_fit",
            "optimizer.lr": float(lr),
            "seed": float(seed),
            "trainer.epochs": 5.0,
        }
        values = {m["name"]["tag"]: m for m in group["metricValues"]}
        for key in ("final_loss", "best_loss"):  # the final figures, at the last step
            value = values[f"hparam/{key}"]
            assert value["trainingStep"] == outcome["steps"] - 1
            assert float(value["value"]) == pytest.approx(outcome[key], rel=1e-6)
            assert math.isfinite(float(value["value"]))

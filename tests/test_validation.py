"""Every bad input stops the run before any work, with one message: key, value, what is allowed.

The table runs in this process (a subprocess per row would take minutes here): the rows that
Hydra itself refuses go through the real entry point (`runner.__main__.main`), the others
through `cli.run_job` from the composed config, which is where `python -m runner` hands over.
A few cases run as real subprocesses to pin the exit status and the terminal text end to end.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli, compose_config
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from runner.__main__ import main
from runner.cli import run_job
from runner.config.check import ConfigError, refused_override

BASE = ("experiment=linear_fit", "logger=none", "trainer.epochs=2")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
NO_MPS = pytest.mark.skipif(
    bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    reason="MPS is available here",
)

# (id, overrides, fragments the one message must contain: the key, the value, what is allowed)
CASES = [
    ("unknown key", ["trainer.epoch=5"], ["trainer.epoch=5", "did you mean 'epochs'"]),
    ("added unknown key", ["+trainer.epoch=5"], ["'trainer.epoch'", "did you mean 'epochs'"]),
    ("unknown top-level key", ["seedd=1"], ["seedd=1", "did you mean 'seed'"]),
    ("wrong type", ["trainer.epochs=abc"], ["trainer.epochs='abc'", "an integer"]),
    ("zero lr", ["optimizer.lr=0"], ["optimizer.lr=0", "positive"]),
    ("negative lr", ["optimizer.lr=-1"], ["optimizer.lr=-1", "positive"]),
    ("nan lr", ["optimizer.lr=nan"], ["optimizer.lr=nan", "finite number"]),
    ("negative epochs", ["trainer.epochs=-1"], ["trainer.epochs=-1", "at least 0"]),
    ("zero batch", ["trainer.batch_size=0"], ["trainer.batch_size=0", "positive integer"]),
    ("unknown device", ["trainer.device=gpu"], ["trainer.device", "'gpu'", "auto, cpu, cuda"]),
    ("absent cuda", ["trainer.device=cuda"], ["trainer.device='cuda'", "no CUDA", "cpu or auto"]),
    ("absent mps", ["trainer.device=mps"], ["trainer.device='mps'", "no Apple MPS", "cpu or auto"]),
    ("zero points", ["dataset.n=0"], ["dataset.n=0", "positive integer"]),
    (
        "missing csv",
        ["dataset=csv", "dataset.path=missing.csv"],
        ["dataset.path='missing.csv'", "no such file"],
    ),
    (
        "malformed csv",
        ["dataset=csv", "dataset.path=bad.csv", "dataset.x=a", "dataset.y=b"],
        ["dataset.path='bad.csv'", "line 3 has 1 fields", "header has 2"],
    ),
    (
        "missing column",
        ["dataset=csv", "dataset.path=good.csv", "dataset.x=zz", "dataset.y=b"],
        ["dataset.x='zz'", "columns: a, b"],
    ),
    ("formula syntax", ['model.formula="w*x+"'], ["model.formula", "'w*x+'", "syntax error"]),
    ("unknown function", ['model.formula="w*q(x)"'], ["model.formula", "q", "allowed:"]),
    (
        "unknown name",
        ['dataset.formula="2*z"'],
        ["dataset.formula='2*z'", "unknown name(s) z", "function of x alone"],
    ),
    ("attribute", ['model.formula="x.real * w"'], ["model.formula", "'.real'", "allowed:"]),
    ("subscript", ['model.formula="x[0] * w"'], ["model.formula", "'x[0]'", "allowed:"]),
    ("string", ["model.formula=\"'a' * w + x\""], ["model.formula", "string 'a'", "allowed:"]),
    (
        "lambda",
        ['model.formula="x + (lambda: w)"'],
        ["model.formula", "lambda 'lambda: w'", "allowed:"],
    ),
    ("dunder", ['model.formula="__class__ * x"'], ["model.formula", "'__class__'", "allowed:"]),
    (
        "import payload",
        ["model.formula=\"__import__('os').system('touch pwned')\""],
        ["model.formula", "__import__", "is not allowed", "allowed:"],
    ),
    (
        "shape mismatch",
        ["model=mlp", "model.out_features=3"],
        ["model output has shape (2, 3)", "target has shape (2,)", "model.out_features=1"],
    ),
    (
        "unknown target",
        ["model._target_=nowhere.Model"],
        ["model._target_='nowhere.Model'", "cannot be imported"],
    ),
    (
        "early stop patience",
        ["trainer.early_stop={patience:0}"],
        ["trainer.early_stop.patience=0", "at least 1"],
    ),
    ("missing checkpoint", ["trainer.resume=nowhere"], ["trainer.resume='nowhere'", "auto"]),
    (
        "unknown compile backend",
        ["trainer.compile=inductr"],
        ["trainer.compile='inductr'", "did you mean 'inductor'", "aot_eager"],
    ),
    (
        "compile without a model",
        ["experiment=rosenbrock", "trainer.compile=true"],
        ["trainer.compile", "dataset=none", "trainer.compile=false"],
    ),
]
MARKS = {"absent cuda": NO_CUDA, "absent mps": NO_MPS}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "good.csv").write_text("a,b\n1,2\n3,4\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3\n")
    return tmp_path


def main_in_process(
    args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """`python -m runner ARGS` through the real entry point: (exit status, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["runner", *args, f"hydra.run.dir={cwd / 'run'}"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as stopped:
            main()
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:  # Hydra configured logging into the run directory
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr()
    return stopped.value.code, out.out, out.err


def job_in_process(
    args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """The same from the composed config on (Hydra composes once here, twice in main)."""
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = compose_config(*args)
    with pytest.raises(SystemExit) as stopped:
        run_job(cfg, cwd / "run", RunMode.RUN, {})
    out = capsys.readouterr()
    return stopped.value.code, out.out, out.err


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        pytest.param(overrides, fragments, id=name, marks=MARKS.get(name, ()))
        for name, overrides, fragments in CASES
    ],
)
def test_bad_input_stops_with_one_clear_message(overrides, fragments, workdir, monkeypatch, capsys):
    hydra_refuses = any(o.split("=")[0] in ("trainer.epoch", "seedd") for o in overrides)
    run_it = main_in_process if hydra_refuses else job_in_process
    status, out, err = run_it([*BASE, *overrides], workdir, monkeypatch, capsys)
    assert status == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Config error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in out + err
    assert not (workdir / "run" / "metrics.json").exists()  # stopped before any work
    assert not (workdir / "pwned").exists()


def test_refused_override_leaves_other_errors_to_hydra():
    assert refused_override(ValueError("Could not override 'x'")) is None
    assert refused_override(ValueError("something else")) is None


@pytest.mark.slow
def test_cli_unknown_key_exits_2_with_a_hint(tmp_path):
    proc = cli(*BASE, "trainer.epoch=5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Config error: trainer.epoch=5: unknown key 'trainer.epoch' (did you mean 'epochs'?); "
        "trainer has: epochs, batch_size, device, dtype, grad_clip, accumulate, "
        "log_every_n_steps, check_grads, checkpoint_every, resume, early_stop, objective, compile"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_cli_formula_payload_never_runs(tmp_path):
    payload = "model.formula=\"__import__('os').system('touch pwned')\""
    proc = cli(*BASE, payload, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Config error: model.formula" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_full_error_shows_the_traceback(tmp_path, monkeypatch):
    """HYDRA_FULL_ERROR=1: the runner's own errors propagate (Hydra prints the traceback)..."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="optimizer.lr=0 must be a positive number"):
        run_job(compose_config(*BASE, "optimizer.lr=0"), tmp_path / "run", RunMode.RUN, {})


def test_full_error_shows_hydras_traceback_for_a_refused_override(tmp_path):
    """...and so does Hydra's refusal of an unknown key, which the hint otherwise replaces."""
    args = (*BASE, "trainer.epoch=5", f"hydra.run.dir={tmp_path / 'run'}")
    proc = cli(*args, cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "Could not override 'trainer.epoch'" in proc.stderr

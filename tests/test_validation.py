"""Every bad input stops the run before any work, with one message: key, value, what is allowed.

The table runs in this process (a subprocess per row would take minutes here): the rows that
Hydra itself refuses go through the real entry point (`runner.__main__.main`), the others
through `cli.run_job` from the composed config, which is where `python -m runner` hands over.
A few cases run as real subprocesses to pin the exit status and the terminal text end to end,
and one hides the sweep plugins from Hydra to see what a user without the `sweep` extra sees.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytest
import torch
from conftest import cli, compose_config
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from runner.__main__ import CONFIGS, main
from runner.build import build, resolve_device
from runner.build.data import Data
from runner.cli import ASKED, chosen_options, refused_override, run_job
from runner.config.check import ConfigError, check
from runner.run import run

BASE = ("experiment=linear_fit", "logger=none", "trainer.epochs=2")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
NO_MPS = pytest.mark.skipif(
    bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    reason="MPS is available here",
)


# (id, overrides, fragments the one message must contain: the key, the value, what is allowed)
def csv(path: str, x: str = "a") -> list[str]:
    """The overrides of `dataset=csv` on a file of the `workdir` fixture, target column b."""
    return ["dataset=csv", f"dataset.path={path}", f"dataset.x={x}", "dataset.y=b"]


CASES = [
    ("unknown key", ["trainer.epoch=5"], ["trainer.epoch=5", "did you mean 'epochs'"]),
    ("added unknown key", ["+trainer.epoch=5"], ["'trainer.epoch'", "did you mean 'epochs'"]),
    ("unknown top-level key", ["seedd=1"], ["seedd=1", "did you mean 'seed'"]),
    ("misspelled experiment", ["experimnet=sine_mlp"], ["did you mean 'experiment'"]),
    (
        "key the optimizer lacks",
        ["optimizer=adam", "optimizer.momentum=0.9"],
        [
            "optimizer.momentum=0.9: the optimizer option adam (torch.optim.Adam) has no key "
            "'momentum'; it takes: lr, betas, eps, weight_decay, amsgrad, "
        ],
    ),
    ("wrong type", ["trainer.epochs=abc"], ["trainer.epochs='abc'", "an integer"]),
    ("seed past NumPy's", ["seed=4294967296"], ["seed=4294967296 must be an integer from 0"]),
    ("a model without data", ["dataset=none", "model=mlp"], ["dataset=none needs model=none"]),
    (
        "a model of other inputs",
        ["experiment=sine_mlp", "model.in_features=5"],
        ["model.in_features=5 but the data has 1 input column(s); set model.in_features=null"],
    ),
    ("a formula without data", ["dataset=none"], ["dataset=none needs model=none"]),
    (
        "a layer of no width",
        ["experiment=sine_mlp", "model.out_features=0"],
        ["model.out_features=0 must be a positive integer"],
    ),
    ("a null choice", ["experiment=sine_mlp", "model.activation=null"], ["activation=null is"]),
    (
        "a pair given one number",
        ["optimizer=adam", "+optimizer.betas=[0.9]"],
        ["optimizer.betas=[0.9] is not a list of 2 (finite number, finite number)"],
    ),
    (
        "wrong type for a number or tensor",  # torch annotates weight_decay `float | Tensor`
        ["optimizer=sgd", "optimizer.weight_decay=abc"],
        ["optimizer.weight_decay='abc' is not a finite number"],
    ),
    ("capitalised choice", ["trainer.amp=BFloat16"], ["did you mean 'bfloat16'"]),
    (
        "full precision as amp",  # not "did you mean float16"
        ["trainer.amp=float32"],
        ["trainer.amp='float32' is not allowed: full precision is trainer.amp=null, the default"],
    ),
    ("amp off", ["trainer.amp=false"], ["trainer.amp=false is not allowed: full precision is"]),
    ("amp on", ["trainer.amp=true"], ["trainer.amp=true is not allowed; use null, bfloat16 or"]),
    (
        "compile off",
        ["trainer.compile=null"],
        ["trainer.compile=null is not allowed: no compiling is trainer.compile=false, the default"],
    ),
    ("compile a number", ["trainer.compile=3"], ["trainer.compile=3 is not true or false, or a"]),
    (
        "formula with parentheses unquoted",
        ["model.formula=sin(x)*w"],
        [
            "model.formula=sin(x)*w: Hydra cannot read this override (mismatched input '*' "
            "expecting <EOF>); Hydra's grammar reads ( ) [ ] { } ' , itself: quote the value "
            "twice, shell quotes around Hydra quotes: 'model.formula=\"sin(x)*w\"'"
        ],
    ),
    ("override without =", ["epochs"], ["epochs: Hydra cannot read", "key=value"]),
    (
        "= in a value (a sweep job's directory)",
        ["trainer.resume=runs/0_optimizer.lr=0.01"],
        ["shell quotes around Hydra quotes: 'trainer.resume=\"runs/0_optimizer.lr=0.01\"'"],
    ),
    (
        "Hydra quotes around the whole override",
        ['"loss.formula=(pred - y)**2"'],
        ["Hydra's quotes go around the value only: 'loss.formula=\"(pred - y)**2\"'"],
    ),
    (
        "a search with a parenthesis missing",
        ["optimizer.lr=tag(log, interval(0.01, 1.0)"],
        ["Hydra cannot read", "tag(...) is Hydra's sweep syntax: check its parentheses"],
    ),
    (
        "deleting a null key",
        ["~trainer.grad_clip"],
        ["~trainer.grad_clip: Hydra deletes only a key that holds a value"],
    ),
    ("unknown sweep function", ["optimizer.lr=intervl(0.1,1)"], ["Unknown function 'intervl'"]),
    (
        "a letter beyond ASCII, unquoted",
        ["model.formula=α*x+β"],
        ["Hydra reads letters beyond ASCII only in quotes: 'model.formula=\"α*x+β\"'"],
    ),
    ("zero lr", ["optimizer.lr=0"], ["optimizer.lr=0", "positive"]),
    ("half dtype", ["trainer.dtype=bfloat16"], ["half precision set trainer.amp=bfloat16 or"]),
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
        csv("bad.csv"),
        ["dataset.path='bad.csv'", "line 3 has 1 fields", "header has 2"],
    ),
    (
        "csv header with a name twice",
        csv("twice.csv"),
        ["dataset.path='twice.csv': the header names a twice"],
    ),
    (
        "csv target as input",
        csv("good.csv", x="b"),
        ["dataset.x='b' with dataset.y='b': x names one or more columns, each once, and not"],
    ),
    (
        "csv path a directory",
        csv("."),
        ["dataset.path='.': a directory, not a file"],
    ),
    (
        "missing column",
        csv("good.csv", x="zz"),
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
        "a parameter as wide as two points",  # broadcasts over the first two: not over three
        ["+model.params.w=[1.0,2.0]", "trainer.batch_size=2"],
        ["model.formula", "size of tensor a (2) must match the size of tensor b (3)"],
    ),
    (
        "a parameter named y",
        ['model.formula="w*x + b + y"'],
        ["y names what the model predicts, so it cannot be a parameter too"],
    ),
    (
        "unknown target",
        ["model._target_=nowhere.Model"],
        ["model._target_='nowhere.Model'", "cannot be imported", "its folder on PYTHONPATH"],
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
    (
        "misspelled option",
        ["optimizer=adma"],
        ["optimizer=adma", "did you mean 'adam'", "optimizer has: adam, adamw, gd"],
    ),
    (
        "an option's path",
        ["optimizer=configs/optimizer/adam.yaml"],
        [
            "optimizer=configs/optimizer/adam.yaml: an option is a file's name, not its path "
            "(did you mean 'adam'?); optimizer has: adam, adamw, gd"
        ],
    ),
    ("misspelled added group", ["+optimzer.lr=0.1"], ["key 'optimzer'", "did you mean 'optim"]),
    (
        "key a keyless option lacks",
        ["loss.delta=2"],
        ["loss.delta=2", "(runner.build.losses.mse) has no key 'delta'; it takes none"],
    ),
    (
        "mandatory value unset",
        ["dataset=csv", "dataset.x=a", "dataset.y=b"],
        ["dataset.path has no value", "dataset.path=..."],
    ),
    *(
        (
            f"classification loss on values ({loss})",
            [loss],
            [f"loss: {name} reads classes, and dataset.task=regression holds values"],
        )
        for loss, name in (
            ("loss=cross_entropy", "cross_entropy"),
            ("loss=bce", "bce"),  # which would train on values, to a negative loss
            ("loss._target_=torch.nn.functional.nll_loss", "nll_loss"),
        )
    ),
    (
        "a loss's own refusal",
        ["loss=huber", "loss.delta=-1"],
        ["loss (loss.delta=-1): computing it on the first batch failed: huber_loss does not"],
    ),
    (
        "a callback's own check",
        ["hydra.callbacks.summary.fail_on=some"],
        ["hydra.callbacks.summary.fail_on='some'", "use any or all"],
    ),
    *(
        (
            f"a search in the sweeper's params ({kind})",
            ["hparams_search=linear_fit_optuna", f"hydra.sweeper.params.optimizer.lr={value}"],
            ["have dots in them", f"an override of its own: 'optimizer.lr={value}'"],
        )
        for kind, value in (("a value", "0.5"), ("a search", "interval(0.01,0.5)"))
    ),
    (
        "a grid's values as the sweeper's params",  # OmegaConf cannot merge into its null
        ["-m", 'hydra.sweeper.params={seed: "1,2"}'],
        ['hydra.sweeper.params={seed: "1,2"}: the sweep\'s values are overrides of their own'],
    ),
    (
        "a setting torch refuses",
        ["optimizer=sgd", "optimizer.momentum=-1"],
        ["optimizer: building torch.optim.SGD failed: Invalid momentum value: -1"],
    ),
    (
        "a dataset of numpy arrays",
        ["~dataset", "+dataset._target_=test_validation.numpy_data"],
        ["dataset: Data.x is a numpy.ndarray, and Data holds torch tensors: torch.as_tensor"],
    ),
    (
        "a dataset of another dtype",
        ["~dataset", "+dataset._target_=test_validation.float64_data"],
        ["dataset: x holds torch.float64, and the run computes in torch.float32"],
    ),
    (
        "targets as a column",
        ["~dataset", "+dataset._target_=test_validation.column_data"],
        ["dataset: the targets have shape (20, 1), and the model gives one value a point"],
    ),
    (
        "a search in a grid sweep",
        ["-m", "optimizer.lr=interval(0.01,1)"],
        ["optimizer.lr=interval(0.01,1): a grid sweep runs lists of values (a,b,c), and a"],
    ),
    (
        "a sweep and a config to show",
        ["-m", "--cfg", "job", "optimizer.lr=0.1,0.2"],
        ["-m runs a sweep, and --cfg, --info or --shell-completion show something and run"],
    ),
    (
        "a model formula over the whole batch",
        ['model.formula="w * mean(x) + b"'],
        ["model.formula='w * mean(x) + b': mean(...) reduces over the points"],
    ),
    (
        "a tensor parameter that does not broadcast over the points",
        ["+model.params.w=[1.0,2.0,3.0]"],
        ["must match the size of tensor b (2)", "(the data has inputs x; this pass ran on 2"],
    ),
    (
        "a loss formula left unreduced",
        ["loss=expression", 'loss.formula="(pred - y)**2"'],
        ["gives a tensor of shape (3,) on 3 points, and .backward() needs a scalar"],
    ),
    (
        "a parameter named as an input column",
        ['model.formula="w*x + x2"', "+model.params.x2=1.0"],
        ["has no parameter 'x2' (x, x1, x2, ... name the data's input columns); its parameters: w"],
    ),
    (
        "a parameter named as a constant",
        ["+model.params.e=1.0"],
        ["model.params.e: e is the constant 2.71828 in formulas (pi, e), not a parameter"],
    ),
    (
        "a _target_ over an option with other keys",
        ["model._target_=test_validation.DictOut"],
        [
            "unknown key 'model.formula'",
            "(formula, params come from the option model=expression, which a _target_ set over"
            " it does not remove: start from model=none (`override /model: none` in an",
        ],
    ),
    (
        "a key of the user's own, not the option's",
        ["experiment=sine_mlp", "model._target_=test_validation.DictOut", "+model.formula=x"],
        ["unknown key 'model.formula'; model takes: hidden, activation, in_features, out_f"],
    ),
    (
        "a model that returns a dict",
        ["experiment=sine_mlp", "model._target_=test_validation.DictOut"],
        ["model: its forward returns dict, and the runner takes a tensor: the predictions"],
    ),
    (
        "a model formula over a CSV's column names",  # it said to use dataset=none
        ['model.formula="w*a + c"'],
        ["model.formula='w*a + c' uses no input: the data's columns are x, or x1, x2, ..."],
    ),
    (
        "batch norm over a last batch of one point",  # a traceback at the end of epoch 1
        ["experiment=sine_mlp", "model._target_=test_validation.Normed", "trainer.batch_size=17"],
        [
            "its batch norm needs two points or more a batch in training, and the last batch of "
            "each epoch holds 1 point (800 points in batches of 17)"
        ],
    ),
    (
        "a model that computes in float64",  # torch's dtype clash alone does not say why
        ["experiment=sine_mlp", "model._target_=test_validation.Float64Layer"],
        [
            "model: the first forward pass failed: ",
            "(the run casts the model's parameters to trainer.dtype=float32; a model that "
            "computes in another dtype needs that trainer.dtype, or casts of its own)",
        ],
    ),
    (
        "integer inputs to a float model",
        ["experiment=logistic_blobs", "~dataset", "+dataset._target_=test_validation.token_data"],
        ["(the dataset's x is torch.int64, which is kept for a model that takes integers)"],
    ),
    (
        "a loss autograd cannot train through",
        ["loss._target_=test_validation.detached_mse"],
        ["loss: computing it on the first batch gives a value that does not depend on the"],
    ),
    (
        "a model of complex outputs",
        ["experiment=sine_mlp", "model._target_=test_validation.ComplexOut"],
        ["gives a complex value (torch.complex64), and .backward() needs a real one"],
    ),
    (
        "class indices as a column",
        ["~dataset", "+dataset._target_=test_validation.class_column_data"],
        ["but they have shape (20, 1); make y of shape (n,) (y.squeeze(-1))"],
    ),
    (
        "an optimizer without _partial_",
        ["~optimizer._partial_"],
        ["missing 1 required positional argument: 'params'; the runner passes the optimizer"],
    ),
    ("zero scheduler period", ["scheduler=step", "scheduler.step_size=0"], ["step_size=0"]),
    (
        "a schedule torch refuses",
        ["scheduler._target_=torch.optim.lr_scheduler.OneCycleLR", "+scheduler.max_lr=0.1"],
        ["scheduler: building torch.optim.lr_scheduler.OneCycleLR failed: You must define"],
    ),
    (
        "a schedule stepped on a metric",
        ["scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau"],
        ["ReduceLROnPlateau' steps on a metric, and the runner steps the schedule once an"],
    ),
    (
        "a schedule to a negative lr",
        ["scheduler=cosine", "scheduler.eta_min=-1"],
        ["scheduler.eta_min=-1 must be zero or a positive number"],
    ),
    (
        "a schedule to a zero lr",
        ["scheduler=exponential", "scheduler.gamma=0"],
        ["scheduler.gamma=0 must be a positive number"],
    ),
    (
        "a regression loss on classes",
        ["experiment=logistic_blobs", "loss=huber"],
        ["loss: huber_loss compares values, and dataset.task=classification holds class"],
    ),
    (
        "targets a formula makes NaN",
        ['dataset.formula="log(x - 1)"'],
        ["dataset: y holds NaN or infinite values (dataset.formula='log(x - 1)')"],
    ),
    (
        "a NaN starting value",
        ["+model.params.w=nan"],
        ["model: the first forward pass gives NaN or infinite values at the starting"],
    ),
    (
        "a loss that starts NaN",
        ["loss=expression", 'loss.formula="mean(log(pred - 5) + y)"'],
        [
            "loss (loss.formula='mean(log(pred - 5) + y)'",
            "computing it on the first batch gives nan at the starting parameters",
        ],
    ),
    (
        "a line search torch lacks",
        ["optimizer=lbfgs", "optimizer.line_search_fn=wolfe"],
        ["optimizer.line_search_fn='wolfe' is not allowed; use null or strong_wolfe"],
    ),
    (
        "lbfgs that never updates",
        ["optimizer=lbfgs", "optimizer.max_iter=0"],
        ["optimizer.max_iter=0 must be at least 1"],
    ),
    (
        "a loss formula with a typo for y",
        ["loss=expression", 'loss.formula="mean((pred - Y)**2)"'],
        ["loss.formula='mean((pred - Y)**2)' does not use y: a loss over data compares"],
    ),
    (
        "adding a key the config has",
        ["+trainer.epochs=5"],
        ["+trainer.epochs: the config has trainer.epochs already", "++trainer.epochs="],
    ),
    (
        "a sweep without -m",
        ["optimizer.lr=0.1,0.2"],
        ["optimizer.lr=0.1,0.2: a comma-separated value is a sweep", "add -m"],
    ),
    (
        "a dict the shell split",
        ["trainer.early_stop={patience:", "10}"],
        ["{patience:: Hydra cannot read", "in shell quotes around the whole override"],
    ),
    (
        "an interpolation of nothing",
        ["optimizer.lr=${oops}"],
        ["optimizer.lr=${oops}: Interpolation key 'oops' not found", "${trainer.epochs}"],
    ),
    (
        "a search without -m",
        ["hparams_search=linear_fit_optuna"],
        ["hparams_search=linear_fit_optuna is a search", "add -m"],
    ),
    (
        "a sweeper without -m",
        ["hydra/sweeper=optuna"],
        ["hydra/sweeper=optuna is a search, which runs as a sweep: add -m"],
    ),
    (
        "a search's values without -m",
        ["optimizer.lr=interval(0.01,1)"],
        ["optimizer.lr=interval(0.01,1) is a search, one value per job: add -m"],
    ),
    (
        "a misspelled logger key added",
        ["logger=tensorboard", "+logger.histogram_every_n_step=10"],
        ["did you mean 'histogram_every_n_steps'", "figure_every_n_epochs, flush_secs"],
    ),
    (
        "a writer that would never wait",
        ["logger=tensorboard", "logger.handoff_secs=-1"],
        ["logger.handoff_secs=-1 must be a positive number of seconds"],
    ),
    (
        "a semicolon-separated file",
        csv("semi.csv"),
        ["columns: a;b (split by ';'? set 'dataset.delimiter=\";\"')"],
    ),
    (
        "an empty cell",
        csv("holes.csv"),
        ["dataset.path='holes.csv' line 4, column b: '' is not a finite number"],
    ),
    (
        "a word for a class",
        csv("words.csv") + ["dataset.task=classification", "experiment=logistic_blobs"],
        ["dataset.path='words.csv' line 2, column b: 'cat' is no class index 0, 1, 2, ..."],
    ),
    (
        "a deleted group",
        ["~logger"],
        ["logger=null is not an option", "logger=none, tensorboard (logger=none turns it off)"],
    ),
    (
        "early stop as a number",
        ["trainer.early_stop=10"],
        ["trainer.early_stop=10 is not a dict ('key={a: 1, b: 2}', in shell quotes) or null"],
    ),
    (
        "a split with nothing to train on",
        ["dataset.val_fraction=0.99"],
        ["dataset.val_fraction=0.99 holds out 50 of 50 points", "leaves 0 to train on"],
    ),
    (
        "validation objective without a split",
        ["trainer.objective=val_loss"],
        ["trainer.objective=val_loss", "dataset.val_fraction"],
    ),
    (
        "validation objective for a look at one pass",  # it ended with objective null, exit 0
        ["trainer.objective=val_loss", "dataset.val_fraction=0.2", "trainer.epochs=0"],
        ["trainer.epochs=0: a look at one pass validates nothing"],
    ),
]


class DictOut(torch.nn.Module):
    def __init__(self, hidden=(), activation="", in_features=1, out_features=1) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.linear(x)}


class Normed(torch.nn.Module):
    def __init__(self, hidden=(), activation="", in_features=1, out_features=1) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.BatchNorm1d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).sum(-1)


class ComplexOut(Normed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x).sum(-1)
        return torch.complex(out, out)


class Float64Layer(torch.nn.Module):
    """Computes in float64, which the run's cast to float32 undoes."""

    def __init__(self, hidden=(), activation="", in_features=1, out_features=1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.double().unsqueeze(-1)).squeeze(-1).float()


def detached_mse(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((input - target) ** 2).mean().detach()


def token_data(dtype: torch.dtype) -> Data:
    tokens = torch.arange(40) % 10
    return Data(tokens, tokens % 2, task="classification")  # integer inputs, an embedding's


def class_column_data(dtype: torch.dtype) -> Data:
    return Data(
        torch.linspace(0, 1, 20, dtype=dtype),
        (torch.arange(20) % 2).unsqueeze(-1),
        task="classification",
    )


class Embed(torch.nn.Module):
    def __init__(self, hidden=(), activation="", in_features=1, out_features=2) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(10, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x.squeeze(-1))


def test_valid_inputs_the_new_checks_let_through(tmp_path, monkeypatch, capsys):
    """Integer inputs (token ids), a reduction over a parameter, and a --config-dir file that
    is the shipped one: none is refused."""
    from runner.build import build
    from runner.build.models import Expression

    cfg = compose_config(
        "experiment=mlp_classify",
        "~dataset",
        "+dataset._target_=test_validation.token_data",
        "model._target_=test_validation.Embed",
        "model.out_features=2",
        "logger=none",
    )
    assert build(cfg, tmp_path).data.x.dtype == torch.long
    # a target annotated `in_features: int` takes null as the data's width, as advised
    linear = ["experiment=logistic_blobs", "model=linear", "model._target_=torch.nn.Linear"]
    assert build(compose_config(*linear, "logger=none"), None).model.in_features == 2
    assert [n for n, _ in Expression("sum(w) * x + b", {"w": [0.5, 0.5]}).named_parameters()]
    mine = tmp_path / "mine" / "optimizer"
    mine.mkdir(parents=True)
    (mine / "adam.yaml").write_text((CONFIGS / "optimizer" / "adam.yaml").read_text())
    args = ["--config-dir", str(tmp_path / "mine"), "optimizer=adam", "--cfg", "job"]
    monkeypatch.setattr(sys, "argv", ["runner", *args])
    GlobalHydra.instance().clear()
    main()
    assert "torch.optim.Adam" in capsys.readouterr().out


def numpy_data(dtype: torch.dtype) -> Data:
    x = np.linspace(0, 1, 20)
    return Data(x, 2 * x + 1)


def float64_data(dtype: torch.dtype) -> Data:
    x = torch.linspace(0, 1, 20, dtype=torch.float64)
    return Data(x, 2 * x + 1)


def column_data(dtype: torch.dtype) -> Data:
    x = torch.linspace(0, 1, 20, dtype=dtype)
    return Data(x, (2 * x + 1).unsqueeze(-1))


HYDRA_1_4 = pytest.mark.skipif(
    not hydra.__version__.startswith("1.3."), reason="hydra-core 1.4 deletes a null key as asked"
)
MARKS = {"absent cuda": NO_CUDA, "absent mps": NO_MPS, "deleting a null key": HYDRA_1_4}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "good.csv").write_text("a,b\n1,2\n3,4\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3\n")
    (tmp_path / "twice.csv").write_text("a,a,b\n1,2,3\n")
    (tmp_path / "semi.csv").write_text("a;b\n1;2\n3;4\n")
    (tmp_path / "holes.csv").write_text('a,b,note\n1,2,"two\nlines"\n3,,x\n')
    (tmp_path / "words.csv").write_text("a,b\n1,cat\n3,0\n")
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
    status = 0  # a run that completes returns
    try:
        main()
    except SystemExit as stopped:
        status = stopped.code
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:  # Hydra configured logging into the run directory
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "HYDRA_FULL_ERROR" not in os.environ and ASKED not in os.environ  # as it found them
    out = capsys.readouterr()
    return status, out.out, out.err


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
    refused = (
        "trainer.epoch",
        "seedd",
        "experimnet",
        "optimizer.momentum",
        "optimizer",
        "loss.delta",
    )
    refused += ("hydra.callbacks.summary.fail_on",)  # Hydra builds the callback
    refused += ("hydra.sweeper.params.optimizer.lr", "hydra.sweeper.params", "+trainer.epochs")
    refused += ("hparams_search", "hydra/sweeper")  # told from a sweep by Hydra's record
    refused += ("model._target_",)  # the chosen option, named from Hydra's record
    unreadable = ("model.formula=sin(x)*w", "epochs", "optimizer.lr=intervl(0.1,1)")  # grammar
    unreadable += ("model.formula=α*x+β", "trainer.resume=runs/0_optimizer.lr=0.01")
    unreadable += ("trainer.early_stop={patience:", "optimizer.lr=${oops}")
    unreadable += ("optimizer.lr=tag(log, interval(0.01, 1.0)",)
    unreadable += ("~trainer.grad_clip", "optimizer.lr=0.1,0.2")  # Hydra refuses these
    unreadable += ("optimizer.lr=interval(0.01,1)", '"loss.formula=(pred - y)**2"')
    hydra_refuses = any(o.split("=")[0] in refused or o in unreadable for o in overrides)
    run_it = main_in_process if hydra_refuses else job_in_process
    flags = [o for o in overrides if o.startswith("-")] + (["job"] if "--cfg" in overrides else [])
    others = [o for o in overrides if o not in flags]  # argparse takes the options first
    status, out, err = run_it([*flags, *BASE, *others], workdir, monkeypatch, capsys)
    assert status == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Config error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in out + err
    assert not (workdir / "run" / "metrics.json").exists()  # stopped before any work
    assert not (workdir / "pwned").exists()


def refused(*overrides: str) -> ConfigCompositionException:
    """The error Hydra raises composing these overrides after BASE."""
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config(*BASE, *overrides)
    return raised.value


def test_refused_override_reads_hydras_error_and_leaves_the_others_to_hydra():
    """Hydra's refusal of an unknown key is told from its other composition errors by its
    message and the OmegaConf error it chains: this fails if a Hydra release changes them."""
    assert refused_override(refused("trainer.epoch=5")).startswith("trainer.epoch=5: unknown key")
    assert refused_override(refused("optimizer=nope")) is None  # no such option
    assert refused_override(refused("+trainer.epochs=5")) is None  # a key that is there


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.epoch=5"],
        ["seedd=1"],
        ["optimizer=adam", "optimizer.momentum=0.9"],
        ["optimizer=adam", "optimizer.foreach=false"],
        ["optimizer=sgd", "optimizer.nesterov=true"],
        ["dataset.foo=1"],
        ["model.params.w=0.5"],
        ["trainer.early_stop.patience=3"],
    ],
)
def test_plus_is_suggested_exactly_where_the_key_would_then_be_accepted(overrides):
    message = refused_override(refused(*overrides), chosen_options(overrides))
    assert message is not None
    plus = [*overrides[:-1], f"+{overrides[-1]}"]
    try:
        check(OmegaConf.to_container(compose_config(*BASE, *plus), resolve=True))
        accepted = True
    except (ConfigError, ConfigCompositionException):
        accepted = False
    assert (f"+{overrides[-1]}" in message) == accepted, message


def test_a_hydra_error_it_does_not_explain_is_hydras_message(workdir, monkeypatch, capsys):
    args = [*BASE, "hydra.job.chdir=maybe"]  # Hydra's own setting
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 1
    assert "Error merging override hydra.job.chdir=maybe" in err
    assert "Value 'maybe' is not a valid bool" in err
    assert "Traceback" not in out + err and "Config error" not in err


def test_a_model_output_autograd_cannot_train_through_is_a_config_error():
    from runner.build.checks import check_shapes
    from runner.build.data import Data
    from runner.build.losses import mse

    data = Data(torch.linspace(0, 1, 5), torch.zeros(5))
    w = torch.nn.Parameter(torch.tensor(1.0))
    for forward in (lambda x: (w * x).detach(), lambda x: (w * x).long()):
        with pytest.raises(ConfigError, match="does not depend on its parameters through autograd"):
            check_shapes(forward, mse, data, {})
    check_shapes(lambda x: w * x, mse, data, {})  # the same, differentiable: passes
    with pytest.raises(ConfigError, match="one value per point$"):  # not "classes", as (n, k)
        check_shapes(lambda x: (w * x).unsqueeze(0), mse, data, {})  # one row for all points


class Frozen(Normed):
    def __init__(self, hidden=(), activation="", in_features=1, out_features=1) -> None:
        super().__init__()
        self.net = torch.nn.Linear(1, 1).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Doubles(Frozen):
    """No parameters of its own: a loss formula's are the ones that train."""

    def __init__(self, hidden=(), activation="", in_features=1, out_features=1) -> None:
        torch.nn.Module.__init__(self)
        self.net = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_a_frozen_model_is_refused_and_a_model_without_parameters_lets_the_loss_train(tmp_path):
    base = ["experiment=sine_mlp", "trainer.epochs=100", "logger=none"]
    with pytest.raises(ConfigError, match=r"requires_grad=False \(frozen\), so there is nothing"):
        build(compose_config(*base, "model._target_=test_validation.Frozen"), None)
    # pred = 2x and y = 2x + 1 (linear_fit's data, noise 0): the loss's own `a` learns 1
    line = ["dataset=linear", "dataset.noise=0", "optimizer=gd", "optimizer.lr=0.1"]
    loss = ["loss=expression", "loss.formula='mean((pred + a - y)**2)'"]
    cfg = compose_config(*base, *line, *loss, "model._target_=test_validation.Doubles")
    assert run(cfg, tmp_path)["params"]["a"] == pytest.approx(1.0, abs=1e-4)


def test_a_csv_saved_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    """As Excel saves UTF-8: the mark is not part of the first column's name."""
    from runner.build.data import csv

    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffa,b\n1,2\n3,4\n".encode())
    data = csv(str(path), x="a", y="b")
    assert data.x.tolist() == [1.0, 3.0] and data.y.tolist() == [2.0, 4.0]


def test_points_and_targets_that_do_not_pair_up_are_a_config_error():
    from runner.build.checks import check_data
    from runner.build.data import Data

    with pytest.raises(ConfigError, match="x holds 10 points and y 7; one target a point"):
        check_data(Data(torch.linspace(0, 1, 10), torch.zeros(7)), None, torch.float32)
    check_data(Data(torch.linspace(0, 1, 10), torch.zeros(10)), None, torch.float32)
    # one column as (n, 1) is `x` for a formula, as a 1-column CSV's (formulas said x, then x1)
    column = Data(
        torch.linspace(0, 1, 10)[:, None], torch.zeros(10), torch.ones(3, 1), torch.ones(3)
    )
    assert column.x.shape == (10,) and column.x_val.shape == (3,) and column.inputs == ("x",)
    # a dataset of the user's own: its validation split too, before a traceback mid-run
    x, y = torch.linspace(0, 1, 10), torch.zeros(10)
    for data, told in (
        (Data(x, y, x_val=x[:5]), "Data.x_val is given and y_val is not; give both or neither"),
        (Data(x, y, torch.ones(3, 2), y[:3]), "x_val's points have shape (2,) and x's ()"),
        (Data(x, y, x[:0], y[:0]), "Data.x_val holds no points (leave x_val and y_val None"),
        (Data(x[:0], y[:0]), "Data.x holds no points (one at least)"),
    ):
        with pytest.raises(ConfigError, match=re.escape(told)):
            check_data(data, None, torch.float32)


def test_a_config_dir_that_is_not_there_is_one_line(workdir, monkeypatch, capsys):
    args = ["--config-dir", "nowhere", *BASE]
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 2 and err.strip() == (
        f"Config error: Additional config directory '{workdir / 'nowhere'}' not found; "
        "--config-dir takes a directory of config files that exists"
    )


@pytest.mark.parametrize(
    "text, told",
    [
        (  # no `# @package _global_` line
            "defaults:\n  - override /dataset: linear\n",
            "experiment=mine: its file's first line must be '# @package _global_' (an "
            "experiment sets keys of the whole config, as the shipped ones do)",
        ),
        (  # no `# @package _global_` line, and no defaults list: its keys under `experiment.`
            "# my experiment\n\n# @package _global_\noptimizer: {lr: 0.05}\n",
            "experiment=mine: its file's first line must be '# @package _global_' (an "
            "experiment sets keys of the whole config, as the shipped ones do)",
        ),
        (  # a group chosen again without `override`
            "# @package _global_\ndefaults:\n  - /logger: none\n",
            "a defaults list chooses logger twice; an experiment picks another option with "
            "'- override /logger: none'",
        ),
        (  # a group misspelt in a defaults list
            "# @package _global_\ndefaults:\n  - override /optimzer: adam\n",
            "In 'experiment/mine': '- override /optimzer: ...' names no config group (did you "
            "mean 'optimizer'?); the groups are dataset, model, loss, optimizer, scheduler, "
            "trainer, logger",
        ),
        (  # without the leading /: a group under experiment/
            "# @package _global_\ndefaults:\n  - override optimizer: adam\n",
            "In 'experiment/mine': an experiment picks another option of a group of the whole "
            "config with a leading / and override: '- override /optimizer: <option>'",
        ),
        (  # without override and /
            "# @package _global_\ndefaults:\n  - optimizer: adam\n",
            "In 'experiment/mine': an experiment picks another option of a group of the whole "
            "config with a leading / and override: '- override /optimizer: adam'",
        ),
        (  # a defaults list written as a mapping
            "# @package _global_\ndefaults:\n  optimizer: adam\n",
            "Invalid defaults list in 'experiment/mine': its entries are list items, one a line "
            "('- override /optimizer: adam')",
        ),
    ],
)
def test_an_experiment_file_hydra_cannot_compose_is_one_line(
    workdir, monkeypatch, capsys, text, told
):
    (workdir / "conf" / "experiment").mkdir(parents=True)
    (workdir / "conf" / "experiment" / "mine.yaml").write_text(text)
    args = ["--config-dir", "conf", "experiment=mine"]
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 2 and err.strip() == f"Config error: {told}", err


@pytest.mark.parametrize(
    "text, at, advice",
    [
        (  # a key indented off its siblings: PyYAML's traceback
            "# @package _global_\ntrainer:\n  epochs: 2\n optimizer: 3\n",
            "line 4, column 2: ",
            " while parsing a block mapping from line 2; YAML nests keys by their indentation, "
            "so the keys of one mapping start in the same column",
        ),
        (
            "# @package _global_\ntrainer:\n  epochs: 2\n  epochs: 3\n",
            "line 4, column 3: ",
            "found duplicate key epochs while constructing a mapping from line 3; a mapping "
            "holds each key once",
        ),
    ],
)
def test_a_config_file_that_is_no_yaml_is_one_line_naming_where(
    workdir, monkeypatch, capsys, text, at, advice
):
    """PyYAML's own words for the fault differ between its C and Python parsers."""
    (workdir / "conf" / "experiment").mkdir(parents=True)
    mine = workdir / "conf" / "experiment" / "mine.yaml"
    mine.write_text(text)
    args = ["--config-dir", "conf", "experiment=mine"]
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 2 and "\n" not in err.strip(), err
    assert err.startswith(f"Config error: {mine}, {at}") and err.strip().endswith(advice), err


@pytest.mark.parametrize(
    "args, told, fixed",
    [
        (
            ["+experiment=linear_fit"],
            "+experiment=linear_fit: experiment is a config group the config lists already; "
            "choose its option without +: experiment=linear_fit",
            ["experiment=linear_fit"],
        ),
        (
            ["experiment=linear_fit", "++optimizer=adam"],
            "++optimizer=adam: optimizer is a config group the config lists already; choose its "
            "option without +: optimizer=adam",
            ["experiment=linear_fit", "optimizer=adam"],
        ),
        (  # an option of the user's own named like a number
            ["--config-dir", "conf", "experiment=2024"],
            "experiment=2024: 2024 reads as a number or true/false; quote it: "
            "'experiment=\"2024\"'",
            ["--config-dir", "conf", 'experiment="2024"'],
        ),
        (
            ["experiment=linear_fit", "optimizer=1"],
            "optimizer=1: 1 is no option of optimizer; optimizer has: adam, adamw, gd, lbfgs, "
            "rmsprop, sgd",
            ["experiment=linear_fit", "optimizer=gd"],
        ),
    ],
)
def test_a_group_chosen_the_wrong_way_is_one_line_whose_fix_works(
    workdir, monkeypatch, capsys, args, told, fixed
):
    (workdir / "conf" / "experiment").mkdir(parents=True)
    (workdir / "conf" / "experiment" / "2024.yaml").write_text(
        (CONFIGS / "experiment" / "linear_fit.yaml").read_text()
    )
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 2 and err.strip() == f"Config error: {told}", err
    status, out, err = main_in_process([*fixed, "trainer.epochs=2"], workdir, monkeypatch, capsys)
    assert status == 0, err


def test_help_is_the_runners_page_with_every_option_and_flag(tmp_path, monkeypatch, capsys):
    """`--help` shows how to run, every option of every group (the experiments first among
    them) and the flags that the hint for an unknown flag sends the user to."""
    status, out, err = main_in_process(["--help"], tmp_path, monkeypatch, capsys)
    assert status == 0 and "powered by Hydra" not in out, err
    assert "python -m runner experiment=linear_fit " in out
    for experiment in sorted((CONFIGS / "experiment").glob("*.yaml")):
        assert experiment.stem in out.split("experiment: ")[1].splitlines()[0]
    for flag in ("--multirun", "--cfg", "--config-dir", "--info", "--hydra-help"):
        assert flag in out.split("== Flags ==")[1], flag


@pytest.mark.parametrize(
    "args, told",
    [
        (
            ["experiment=linear_fit", "--nope"],
            "--nope is no flag of the runner's; python -m runner --help lists them",
        ),
        (
            ["experiment=linear_fit", "hydra.run.dir="],
            "hydra.run.dir=: hydra.run.dir is empty; give a directory, such as "
            "hydra.run.dir=outputs/mine",
        ),
        (
            ["-m", "experiment=linear_fit", "hydra.sweep.dir=''", "seed=1,2"],
            "hydra.sweep.dir='': hydra.sweep.dir is empty; give a directory, such as "
            "hydra.sweep.dir=outputs/mine",
        ),
        pytest.param(
            ["experiment=linear_fit", "-m", "logger=none"],
            "-m: hydra-core 1.3 takes its flags before the overrides: "
            "python -m runner -m ... <overrides>",
            marks=pytest.mark.skipif(
                not hydra.__version__.startswith("1.3."), reason="1.4 takes flags anywhere"
            ),
        ),
    ],
)
def test_a_flag_hydra_would_answer_with_its_usage_is_one_line(
    workdir, monkeypatch, capsys, args, told
):
    """argparse prints ten lines of usage, and for a flag between overrides blames them; an
    empty run dir (`hydra.run.dir=$OUT`, OUT unset) would write the run into the cwd."""
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 2 and err.strip() == f"Config error: {told}", err


def test_flags_argparse_takes_are_left_to_it():
    """Short flags carry their value (`-cjob`) or combine (`-mc job`), and a flag's value is
    no override (`-cd ~c`): none of these is refused, under hydra-core 1.3's rules either."""
    from runner.config.hydra_hints import flag_hint

    for args in (
        ["-cjob", "experiment=linear_fit"],
        ["-pmodel", "--cfg", "job", "experiment=linear_fit"],
        ["-mc", "job", "experiment=linear_fit"],
        ["experiment=linear_fit", "-cd", "~c", "--cfg", "job"],
        ["--cf", "job", "experiment=linear_fit"],  # a prefix argparse completes
        ["experiment=linear_fit", "logger=none", "-m"],
        ["experiment=linear_fit", "--info", "plugins"],
        ["experiment=linear_fit", "--info"],  # last: the default, all
    ):
        assert flag_hint(args, intermixed=False) is None, args
    # between overrides, --info takes no override as its value: the hint names what works
    for args, flag in (
        (["experiment=linear_fit", "--info", "logger=none"], "--info all"),
        (["experiment=linear_fit", "--info", "config", "logger=none"], "--info config"),
        (["experiment=linear_fit", "--cfg", "job", "logger=none"], "--cfg job"),
    ):
        told = flag_hint(args, intermixed=False)
        assert told == (
            f"{args[1]}: hydra-core 1.3 takes its flags before the overrides: "
            f"python -m runner {flag} ... <overrides>"
        ), args


def test_a_sweep_dir_that_cannot_be_made_is_one_line(workdir, monkeypatch, capsys):
    """Hydra's mkdir gave a traceback; a file in the way failed the sweep's start (exit 1)."""
    from runner.cli import explain

    error = FileNotFoundError(2, "No such file or directory", "/proc/nope")
    assert explain(error, ["-m", "hydra.sweep.dir=/proc/nope"]) == (
        "hydra.sweep.dir=/proc/nope: the sweep directory cannot be made there (No such file or "
        "directory: /proc/nope); give a directory that can be created"
    )
    (workdir / "afile").write_text("a file where the sweep directory would go")
    args = ["-m", *BASE, "seed=1,2", f"hydra.sweep.dir={workdir / 'afile'}"]
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 2 and err.strip().startswith(
        f"Config error: hydra.sweep.dir={workdir / 'afile'}: the sweep directory cannot be made "
        "there (Not a directory: "
    ), err


def test_a_range_with_a_step_of_0_is_one_line(workdir, monkeypatch, capsys):
    """Python's ValueError from Hydra's sweeper (and the Optuna one) was a traceback."""
    args = ["-m", *BASE, "trainer.batch_size=range(10,20,0)"]
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 2 and err.strip() == (
        "Config error: trainer.batch_size=range(10,20,0): range(start, stop, step) takes a "
        "step other than 0"
    ), err


def test_a_sigterm_while_the_processes_start_exits_143(workdir, monkeypatch, capsys):
    """The elastic launcher raises it before any rank has a handler: it was told as Ctrl-C."""
    import torch.distributed.launcher.api as elastic
    from torch.distributed.elastic.multiprocessing.api import SignalException

    def launcher(config: Any, entrypoint: Any) -> Any:
        def started(*args: Any) -> None:
            raise SignalException("Process got signal: 15", sigval=signal.SIGTERM)

        return started

    monkeypatch.setattr(elastic, "elastic_launch", launcher)
    status, out, err = main_in_process([*BASE, "trainer.devices=2"], workdir, monkeypatch, capsys)
    assert status == 128 + signal.SIGTERM and err.strip() == "Interrupted by SIGTERM", err


def test_a_second_ctrl_c_names_the_checkpoint_to_go_on_from(workdir, monkeypatch, capsys):
    """Stopped at once (no checkpoint at that step), the run's last periodic one is there."""
    from runner.observe.scalars import Scalars

    log = Scalars.log

    def second_ctrl_c(self: Scalars, look: Any) -> None:
        log(self, look)
        if look.step >= 20:
            raise KeyboardInterrupt  # as the handler raises it on a second signal

    monkeypatch.setattr(Scalars, "log", second_ctrl_c)
    args = [
        *BASE,
        "trainer.epochs=30",
        "trainer.checkpoint_every=5",
        "trainer.log_every_n_steps=10",
    ]
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 128 + signal.SIGINT and err.strip() == (
        f"Interrupted; continue from its last checkpoint with trainer.resume={workdir / 'run'}"
    ), err
    assert json.loads((workdir / "run" / "metrics.json").read_text())["status"] == "interrupted"


def test_a_rank_0_killed_leaves_a_whole_metrics_json(tmp_path, monkeypatch):
    """Rank 0 writes metrics.json; killed, it wrote none, and the launching process writes
    every key DESIGN.md lists, unknown ones null."""
    import torch.distributed.launcher.api as elastic
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from runner import launch

    def launcher(config: Any, entrypoint: Any) -> Any:
        def started(*args: Any) -> None:
            killed = ProcessFailure(local_rank=0, pid=1, exitcode=-9, error_file="/nonexistent")
            raise ChildFailedError("rank_main", {0: killed})

        return started

    monkeypatch.setattr(elastic, "elastic_launch", launcher)
    with pytest.raises(launch.RankFailed, match=r"rank 0 failed \(SIGKILL\)"):
        launch.spawn(compose_config(*BASE, "trainer.devices=2"), tmp_path / "run", [])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    keys = {"status", "final_loss", "best_loss", "steps", "epochs", "device", "duration_s"}
    assert keys <= set(metrics) and metrics["status"] == "failed"
    assert metrics["device"] == str(resolve_device("auto")) != "auto"


def test_torchruns_one_process_refuses_trainer_devices_above_1(monkeypatch):
    """One process of torchrun's would have started trainer.devices more of its own."""
    from runner import launch

    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match=r"asks for 2 processes, and 1 were started"):
        launch.spawns(compose_config(*BASE, "trainer.devices=2"))
    assert not launch.spawns(compose_config(*BASE))


def test_an_empty_range_in_a_grid_is_one_line(workdir, monkeypatch, capsys):
    """`range(5,1)` holds no value: the sweep launched no job and then failed to summarise."""
    args = ["-m", *BASE, "seed=range(5,1)", f"hydra.sweep.dir={workdir / 'grid'}"]
    status, out, err = main_in_process(args, workdir, monkeypatch, capsys)
    assert status == 2 and err.strip() == (
        "Config error: seed=range(5,1) holds no value: range(start, stop) counts up from start "
        "to below stop (range(5,1,-1) counts down); the sweep would run no job"
    ), err
    assert not (workdir / "grid").exists()


def test_a_run_dir_under_a_file_is_one_line():
    """`mkdir(parents=True)` names the parent it could not make, not the run dir."""
    from runner.cli import explain

    error = NotADirectoryError(20, "Not a directory", "/data/afile")
    assert explain(error, ["experiment=linear_fit", "hydra.run.dir='/data/afile/sub/run'"]) == (
        "hydra.run.dir='/data/afile/sub/run': the run directory cannot be made there (Not a "
        "directory: /data/afile); give a directory that can be created"
    )


def test_a_run_dir_hydra_cannot_make_is_one_line(workdir, monkeypatch, capsys):
    (workdir / "run").write_text("a file where the run directory would go")
    status, out, err = main_in_process(list(BASE), workdir, monkeypatch, capsys)
    assert status == 2 and err.strip() == (
        f"Config error: hydra.run.dir={workdir / 'run'}: the run directory cannot be made there "
        f"(File exists: {workdir / 'run'}); give a directory that can be created"
    ), err


@pytest.mark.parametrize(
    "arg, told",
    [
        (
            "logger=null",
            "logger takes one of its options by name (none, tensorboard); "
            "logger=none leaves it out",
        ),
        (
            "optimizer=null",
            "optimizer takes one of its options by name (adam, adamw, gd, lbfgs, rmsprop, sgd)",
        ),
        ("=1", "an override is key=value"),
        pytest.param(
            "hydra/launcher=null",
            "hydra/launcher takes one of its options by name "
            "(basic, joblib, submitit_local, submitit_slurm)",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
                reason="needs the sweep extra (the launcher plugins)",
            ),
        ),
    ],
)
def test_a_config_group_set_to_null_is_one_line(workdir, monkeypatch, capsys, arg, told):
    """Hydra raises a ValueError with its traceback for these (`experiment: null` is in the
    defaults, so `experiment=null` reads as natural)."""
    status, out, err = main_in_process([*BASE, arg], workdir, monkeypatch, capsys)
    assert status == 2 and err.strip() == f"Config error: {arg}: {told}", err


def test_ctrl_c_before_a_run_starts_is_exit_130_without_a_traceback(monkeypatch, capsys):
    """Ctrl-C while Hydra starts or torch imports, before the run's own handler is set."""
    from runner import cli

    def starting() -> None:
        raise KeyboardInterrupt

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for argv, said in (
        (["runner"], ""),
        (["runner", "-m"], "; the same command finishes the sweep"),
    ):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as stopped:
            cli.main(starting)
        assert stopped.value.code == 130
        assert capsys.readouterr().err == f"Interrupted{said}\n"


@pytest.mark.parametrize("asked", [False, True])
def test_a_failed_sweep_job_shows_its_traceback_only_when_asked(tmp_path, monkeypatch, asked):
    """The entry point sets HYDRA_FULL_ERROR=1 for Hydra; a job (here, or in a worker that
    inherits the environment) still does what the user asked."""
    sweep_dir = tmp_path / "sweep"
    args = ["runner", "-m", *BASE, "optimizer.lr=-1", f"hydra.sweep.dir={sweep_dir}"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", args)
    if asked:
        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    else:
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    GlobalHydra.instance().clear()
    try:
        with pytest.raises(SystemExit) as stopped:  # the summary: a job failed
            main()
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    assert stopped.value.code == 1
    log = (next(sweep_dir.glob("0_*")) / "runner.log").read_text()
    assert "Failed: ConfigError: optimizer.lr=-1 must be a positive number" in log
    assert ("Traceback" in log) == asked


@pytest.mark.slow
@pytest.mark.parametrize(
    "option, needs",
    [
        ("hydra/launcher=joblib", "needs the hydra-joblib-launcher plugin, which"),
        ("hydra/launcher=submitit_slurm", "needs the hydra-submitit-launcher plugin, which"),
        (
            "hparams_search=linear_fit_optuna",
            "(chosen by hparams_search=linear_fit_optuna) needs optuna, which",
        ),
    ],
)
def test_a_sweep_plugin_that_is_not_installed_names_the_pip_install(tmp_path, option, needs):
    """Hydra lists a plugin's options only where it imported it: hidden from the import
    system here (sys.modules[name] = None), each is as good as not installed. (Hydra's
    plugin scanner warns that it cannot import them: those warnings are left out.) The
    Optuna sweeper is the runner's own; it needs optuna, hidden the same way."""
    hidden = [f"hydra_plugins.{p}" for p in ("hydra_joblib_launcher", "hydra_submitit_launcher")]
    hidden.append("optuna")
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({hidden!r})); sys.argv[0] = 'runner'; "
        "from runner.__main__ import main; main()"
    )
    args = ["-m", *BASE, "optimizer.lr=0.1,0.2", option, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::UserWarning:hydra.core.plugins", "-c", code, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Config error: "), proc.stderr
    assert needs in lines[0] and "pip install 'runner[sweep]'" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "sweep").exists()  # stopped before any job


@pytest.mark.slow
def test_cli_unknown_key_exits_2_with_a_hint(tmp_path):
    proc = cli(*BASE, "trainer.epoch=5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Config error: trainer.epoch=5: unknown key 'trainer.epoch' (did you mean 'epochs'?); "
        "trainer has: epochs, batch_size, device, dtype, grad_clip, accumulate, "
        "log_every_n_steps, check_grads, checkpoint_every, resume, early_stop, objective, compile, "
        "devices, num_nodes, amp"
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


def test_an_own_option_named_as_a_shipped_one_is_refused(tmp_path, monkeypatch, capsys):
    """Hydra reads the shipped configs before a --config-dir: a user's optimizer/adam.yaml would
    be passed over in silence, so it is refused; under another name it is the one used."""
    mine = tmp_path / "mine" / "optimizer"
    mine.mkdir(parents=True)
    option = "_target_: torch.optim.Adam\n_partial_: true\nlr: 0.123\n"
    (mine / "adam.yaml").write_text(option)
    (mine / "adam_mine.yaml").write_text(option)
    args = ["--config-dir", str(tmp_path / "mine"), "logger=none", "trainer.epochs=1"]
    status, _, err = main_in_process([*args, "optimizer=adam"], tmp_path, monkeypatch, capsys)
    assert status == 2
    assert err.strip().splitlines() == [
        f"Config error: optimizer=adam: {mine / 'adam.yaml'} has the name of a shipped option, "
        "and Hydra reads the runner's own configs/ first, so yours would be passed over; give "
        "it another name (such as optimizer=adam_mine)"
    ]
    monkeypatch.setattr(sys, "argv", ["runner", *args, "optimizer=adam_mine", "--cfg", "job"])
    GlobalHydra.instance().clear()
    main()
    assert "lr: 0.123" in capsys.readouterr().out


def test_an_import_that_fails_inside_the_users_module_names_its_cause(tmp_path, monkeypatch):
    """A module that imports what is not installed is not a wrong `_target_` path."""
    from runner.config.check import locate

    package = tmp_path / "mine_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "needs.py").write_text("import not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        locate("model", "mine_pkg.needs.Net")
    assert str(caught.value) == (
        "model._target_='mine_pkg.needs.Net': importing it failed: "
        "No module named 'not_installed_anywhere'"
    )
    with pytest.raises(ConfigError, match="cannot be imported; check the module path"):
        locate("model", "mine_pkg.absent.Net")  # the path itself is wrong


@pytest.mark.parametrize(
    "formula", ['model.formula="x.__class__"', 'loss.formula="mean((pred - y)**2) + nan"']
)
def test_a_formula_is_refused_before_any_data_is_made(formula, monkeypatch):
    """A typo in a formula costs nothing on a big dataset: the data is never drawn."""
    from runner.build import build, data

    def drawn(*args, **kwargs):
        raise AssertionError("the data was made before the formula was read")

    monkeypatch.setattr(data, "synthetic", drawn)
    extra = ["loss=expression"] if formula.startswith("loss") else []
    with pytest.raises(ConfigError, match=r"formula: formula '.*' is not allowed|no constant"):
        build(compose_config("experiment=linear_fit", *extra, formula), None)


def test_a_parameter_typed_with_a_look_alike_letter_is_the_formulas():
    """Python reads the micro sign in a formula as mu (NFKC): a params key typed with the same
    key on the keyboard must reach that parameter, not be refused as two names that look one."""
    from runner.build.models import Expression

    model = Expression("\u00b5*x + b", {"\u00b5": 2.0})  # µ, the micro sign, both times
    assert {n: p.item() for n, p in model.named_parameters()} == {"b": 0.0, "\u03bc": 2.0}


def test_a_dataset_too_big_for_memory_names_its_size_key(monkeypatch):
    """torch's allocator says how many bytes it could not find, not which setting asked."""
    from runner.build import build, data

    def linspace(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 4e12")

    monkeypatch.setattr(data.torch, "linspace", linspace)
    with pytest.raises(ConfigError, match=r"not fit in this machine's memory: .*\(dataset.n\)"):
        build(compose_config("experiment=linear_fit", "dataset.n=1000000000000"), None)

"""Starting and joining the processes of one run: `trainer.devices=N` starts them through
PyTorch's elastic launcher. Under torchrun a rank other than 0 never starts Hydra, which would
pick a run directory of its own (Hydra #2070): `follow` takes rank 0's instead."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.check import ConfigError, check
from runner.sweep.resume import read_metrics
from runner.train.world import world

ELASTIC_LOGS = (  # the elastic launcher's loggers, those that set their own level too
    "torch.distributed.elastic",
    "torch.distributed.elastic.agent.server.api",
    "torch.distributed.elastic.multiprocessing.errors",
    "torch.distributed.launcher.api",
    "torch.multiprocessing.spawn",
)
FINAL = ("interrupted", "completed", "diverged", "pruned")  # a rank 0 that wrote its metrics
LOST = 4  # the exit status of a rank that lost the connection to the one that failed
# what rank 0 answers without running (`--cfg job`, `--help`): the other ranks just exit
QUERIES = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc")


class RankFailed(RuntimeError):
    """A process of the run failed, so every one stopped: its own error is above."""


def follow() -> None:
    """Before Hydra starts: a torchrun rank other than 0 runs rank 0's config and exits."""
    w = world()
    if w.size == 1 or "SUBMITIT_EXECUTOR" in os.environ:  # submitit: each task is a Hydra job
        return
    args = sys.argv[1:]
    if "-m" in args or "--multirun" in args:  # every rank stops, so none waits for the others
        if w.leader:
            print(
                "Config error: a sweep (-m) under torchrun would run every job on every "
                "process; run the sweep without torchrun and give each job its processes "
                "with trainer.devices=N",
                file=sys.stderr,
            )
        sys.exit(2)
    if w.leader:
        return
    if any(a.partition("=")[0] in QUERIES for a in args):
        sys.exit(0)
    logging.basicConfig(level=logging.WARNING, format=f"[rank {w.rank}] %(message)s")
    try:
        cfg, run_dir, overrides = join(None, None, ())
        from runner.run import run

        sys.exit(exit_status(run(cfg, run_dir, overrides)))
    except ConfigError:
        sys.exit(2)  # rank 0 says why
    except RankFailed as e:  # this rank lost the one that failed, as under trainer.devices=N
        sys.stderr.write(f"{e}\n")  # in one write: torchrun's log shares the stream
        sys.exit(LOST)


def join(
    cfg: DictConfig | None, run_dir: Path | None, overrides: Sequence[str]
) -> tuple[DictConfig, Path, list[str]]:
    """Rank 0's config, run directory and overrides, on every process of the run."""
    w = world()
    if w.size == 1:
        assert cfg is not None and run_dir is not None
        return cfg, run_dir, list(overrides)
    from runner.train import distributed

    plain = None if cfg is None else OmegaConf.to_container(cfg, resolve=True)
    plain, where, overrides = distributed.join(w, (plain, str(run_dir), list(overrides)))
    t = plain.get("trainer") or {}
    try:
        agree(t, w.size, w.local_size)
        distributed.pin(w, str(t.get("device", "auto")))
    except BaseException:  # gloo's threads end before the interpreter, or they may abort it
        distributed.leave()
        raise
    if not w.leader:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the run
    return OmegaConf.create(plain), Path(where), overrides


def agree(trainer: Any, started: int, here: int | None = None) -> None:
    """Under torchrun: trainer.devices x num_nodes, where set, is the processes it started,
    trainer.devices of them on each node (`here`: on this one)."""
    wanted = processes(trainer)
    if wanted == 1:  # the default: torchrun's --nproc-per-node and --nnodes decide
        return
    asked = (
        f"trainer.devices={trainer.get('devices')} x trainer.num_nodes={trainer.get('num_nodes')}"
    )
    if wanted != started:
        raise ConfigError(
            f"{asked} asks for {wanted} processes, and {started} were started; make them agree"
        )
    if here is not None and here != trainer.get("devices", 1):
        raise ConfigError(
            f"{asked} asks for {trainer.get('devices', 1)} processes on each node, and {here} "
            "were started on this one; set trainer.devices to torchrun's --nproc-per-node and "
            "trainer.num_nodes to its --nnodes"
        )


def processes(trainer: Any) -> int:
    """trainer.devices x trainer.num_nodes (1 where they are not integers: the check says)."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    return devices * nodes if type(devices) is type(nodes) is int and devices > 0 < nodes else 1


def spawns(cfg: DictConfig) -> bool:
    """Whether this process starts the run's processes (`trainer.devices=N`, no launcher)."""
    if "WORLD_SIZE" in os.environ and world().size == 1:  # torchrun's one process
        agree(cfg.get("trainer") or {}, 1)
    return world().size == 1 and processes(cfg.get("trainer") or {}) > 1


def spawn(cfg: DictConfig, run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Run the config over `trainer.devices` processes on this machine; rank 0's metrics."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from runner.build import resolve_device
    from runner.run import record, write_json
    from runner.train import checkpoint

    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    t = check(plain).trainer
    if t.num_nodes > 1:
        raise ConfigError(
            f"trainer.num_nodes={t.num_nodes}: the runner starts processes on this machine "
            f"only; start them on every node with torchrun (--nnodes={t.num_nodes} "
            f"--nproc-per-node={t.devices}) or with hydra/launcher=submitit_slurm"
        )
    checkpoint.claim(run_dir, checkpoint.locate(t.resume, run_dir))
    record(cfg, run_dir)
    # an elastic launcher option that older torch releases lack
    handles = "signals_to_handle" in {f.name for f in dataclasses.fields(LaunchConfig)}
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=t.devices,
        run_id=f"runner-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port
        max_restarts=0,  # a rank that fails ends the run: every rank stops with it
        # Ctrl-C reaches the ranks from the terminal: a launcher that passed it on as well
        # would make it a second one, which stops a rank at once rather than after its step
        **({"signals_to_handle": "SIGTERM,SIGHUP,SIGQUIT"} if handles else {}),
    )
    metrics_json, started = run_dir / "metrics.json", time.time()
    os.environ[checkpoint.HELD] = str(run_dir)  # the ranks' `checkpoint.held`: this process's
    # a Ctrl-C before the processes are there reaches this one alone: they stop as they start
    stopped = Path(tempfile.gettempdir()) / f"{config.run_id}.ctrl-c"
    # a handler of Python's, not SIG_IGN, which the processes would inherit while they start
    # (a Ctrl-C then would be lost); a Python handler is theirs only once set
    ctrl_c = signal.signal(signal.SIGINT, lambda *_: stopped.touch()) if handles else None
    # the launcher's own log says again what the ranks and the summary below say
    levels = {name: logging.getLogger(name).level for name in ELASTIC_LOGS}
    for name in ELASTIC_LOGS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # a joblib worker's start method is loky's, which a rank would be told to take and cannot
    method = multiprocessing.get_start_method(allow_none=True)
    if method not in (None, *multiprocessing.get_all_start_methods()):
        multiprocessing.set_start_method("spawn", force=True)
    try:
        ranks = elastic_launch(config, rank_main)(
            plain, str(run_dir), list(overrides), str(stopped)
        )
    except (ChildFailedError, SignalException) as e:
        fresh = metrics_json.exists() and metrics_json.stat().st_mtime >= started
        written = read_metrics(run_dir) if fresh else {}
        if written.get("status") in FINAL:  # a signal: rank 0's metrics say where it stopped
            return written  # (or that the run was done: it came after the last step)
        if isinstance(e, SignalException):
            raise KeyboardInterrupt(e.sigval.name) from None
        # the first to fail, but not a rank that only lost the connection to it
        rank, failure = min(
            e.failures.items(), key=lambda f: (f[1].exitcode == LOST, f[1].timestamp)
        )
        if failure.exitcode in (128 + signal.SIGINT, -signal.SIGINT):  # Ctrl-C at their start
            raise KeyboardInterrupt from None
        how = failure.signal_name() if failure.exitcode < 0 else f"exit status {failure.exitcode}"
        said = f" with {written['error']}" if rank == 0 and "error" in written else ""
        error = f"trainer.devices={t.devices}: rank {rank} failed ({how}){said}; every rank stopped"
        if failure.exitcode == LOST:  # the launcher stopped at it, before the failed one's exit
            error = (
                f"trainer.devices={t.devices}: a rank failed (its error is above), and rank "
                f"{rank} lost the connection to it; every rank stopped"
            )
        # rank 0's own metrics, if it wrote any, blame the connection the failed rank dropped
        failed = {"status": "failed", "error": error, "world_size": t.devices}
        unknown = dict.fromkeys(("final_loss", "best_loss", "steps", "epochs"))  # rank 0 died
        device = str(resolve_device(t.device))  # `auto` as the ranks took it
        unknown |= {"device": device, "duration_s": round(time.time() - started, 4)}
        write_json(metrics_json, unknown | written | failed)
        raise RankFailed(error) from None
    finally:
        os.environ.pop(checkpoint.HELD, None)
        stopped.unlink(missing_ok=True)
        multiprocessing.set_start_method(method, force=True)
        if ctrl_c is not None:
            signal.signal(signal.SIGINT, ctrl_c)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    if "config_error" in ranks[0]:
        raise ConfigError(ranks[0]["config_error"])
    return ranks[0]


def forget(run_dir: Path) -> None:
    """A run refused or stopped before it wrote anything leaves no `.hydra/`, and no directory,
    as one process leaves none (`checkpoint.held` removes one that holds only its lock)."""
    from runner.train.checkpoint import LOCK

    if {p.name for p in run_dir.iterdir()} <= {".hydra", LOCK}:
        shutil.rmtree(run_dir / ".hydra", ignore_errors=True)


def rank_main(
    plain: dict[str, Any], run_dir: str, overrides: list[str], stopped: str | None = None
) -> dict[str, Any]:
    """One process of `trainer.devices=N`, as the elastic launcher starts it; `stopped`: the
    file the launcher makes at a Ctrl-C, which came before this process could take it."""
    # Ctrl-C as Python has it, so one that comes while this process starts, before the run's
    # own handler, stops it; one before it started, the launcher noted in `stopped`
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # a Ctrl-C anywhere here exits 130: one that left this function would end the process
        # with status 0 and no result (torch's wrapper takes it so), which the launcher awaits
        if stopped is not None and Path(stopped).exists():
            raise KeyboardInterrupt
        from runner.run import run

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does: processes share the cores
            import torch

            torch.set_num_threads(1)
        metrics = run(OmegaConf.create(plain), Path(run_dir), overrides)
    except ConfigError as e:
        return {"config_error": str(e)}
    except KeyboardInterrupt:  # before the run's handler, or a second Ctrl-C: at once
        sys.exit(128 + signal.SIGINT)
    except RankFailed as e:  # this rank lost the one that failed
        sys.stderr.write(f"{e}\n")  # in one write: torchrun's log shares the stream
        sys.exit(LOST)
    except Exception:  # as one process shows it: the launcher's own log of it is quieted
        traceback.print_exc()
        raise
    if metrics["status"] == "interrupted":  # the launcher is stopping: go now, not after its
        sys.exit(exit_status(metrics))  # grace period (a returned value waits for the others)
    return metrics


def interrupted(e: KeyboardInterrupt) -> int:
    """The exit status of a run a signal stopped: `spawn` names SIGTERM; otherwise Ctrl-C."""
    name = e.args[0] if e.args and e.args[0] in signal.Signals.__members__ else "SIGINT"
    return 128 + signal.Signals[name]


def exit_status(metrics: dict[str, Any]) -> int:
    """As `runner.cli` exits: 0 completed, 128 + the signal interrupted, 1 otherwise."""
    if metrics["status"] == "interrupted":
        return 128 + signal.Signals[metrics.get("signal") or "SIGINT"]
    return 0 if metrics["status"] == "completed" else 1

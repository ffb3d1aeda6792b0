"""How a run ends for the user: one clear line for a bad config, an exit status that says
whether the run worked, and an objective for sweepers."""

from __future__ import annotations

import filecmp
import json
import logging
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
    SearchPathException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from runner.config import hydra_hints
from runner.config.check import (
    CONFIGS,
    GROUPS,
    HYDRA_KEYS,
    RUNTIME_ARGS,
    ConfigError,
    arguments,
    did_you_mean,
    locate,
)
from runner.launch import RankFailed, exit_status, interrupted
from runner.sweep import resume
from runner.sweep.summary import NOT_STARTED, STOP, Summary, stop_jobs, summarise
from runner.train.world import world

log = logging.getLogger("runner")

FULL_ERROR = "HYDRA_FULL_ERROR"  # Hydra's documented switch: errors propagate as tracebacks
ASKED = "RUNNER_FULL_ERROR"  # the user's own HYDRA_FULL_ERROR, while `main` sets Hydra's
CONFIG_ERROR = 2  # the exit status of a bad config
PLUGINS = {  # a hydra/ option whose config a plugin brings: the package that holds it
    "hydra/launcher/joblib": "the hydra-joblib-launcher plugin",
    "hydra/launcher/submitit_local": "the hydra-submitit-launcher plugin",
    "hydra/launcher/submitit_slurm": "the hydra-submitit-launcher plugin",
}
SEARCH = "hparams_search"  # the group of Optuna searches
MODULES = {"optuna": "hydra/sweeper/optuna"}  # a module the runner's sweeper imports: its option
LATE: list[str] = []  # a signal that came as a sweep's job ended, for the next job to act on


def main(app: Callable[[], Any]) -> Any:
    """Run the `@hydra.main` app with HYDRA_FULL_ERROR=1, Hydra's only public way to hand over
    its errors; the user's own setting stays in RUNNER_FULL_ERROR for child processes."""
    intermixed = not hydra.__version__.startswith("1.3.")  # 1.4 takes flags among overrides
    if told := hydra_hints.flag_hint(sys.argv[1:], intermixed):
        print(f"Config error: {told}", file=sys.stderr)
        sys.exit(CONFIG_ERROR)
    # a closed terminal or pipe (`... | head -3`) is no reason to print a traceback a line
    logging.raiseExceptions = False
    asked = full_error()
    saved = {key: os.environ.get(key) for key in (FULL_ERROR, ASKED)}
    os.environ.update({ASKED: "1" if asked else "0", FULL_ERROR: "1"})
    Summary.under_way = None  # until this command's sweep starts
    LATE.clear()
    previous = terminate_as_ctrl_c()
    try:
        return app()
    except (Exception, KeyboardInterrupt) as error:  # Ctrl-C: before the run sets its handler
        if asked:
            raise
        if isinstance(error, Exception):
            sys.exit(report(error))
        sweep = {"-m", "--multirun"} & set(sys.argv)
        finish = "; the same command finishes the sweep" if sweep else ""
        if sweep and Summary.under_way is not None and Summary.under_way[0].is_dir():
            sweep_dir, maximize = Summary.under_way  # between two jobs: the finished ones
            for run_dir, _, _ in resume.job_dirs(sweep_dir):  # and the one Hydra was starting
                if not (run_dir / "metrics.json").exists():
                    (run_dir / "metrics.json").write_text(json.dumps(NOT_STARTED) + "\n")
            summarise(sweep_dir, maximize)
        exit_interrupted(error, finish)  # SIGTERM as `terminate_as_ctrl_c` raises it, or Ctrl-C
    finally:  # the environment as it was
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (`| head`): Python's advice, no traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        for key in saved:
            os.environ.pop(key, None)
        os.environ.update({key: value for key, value in saved.items() if value is not None})


def exit_interrupted(error: KeyboardInterrupt, then: str = "") -> NoReturn:
    """Exit with the status a shell gives the signal that stopped the command (130, 143)."""
    status = interrupted(error)
    by = "" if status == 128 + signal.SIGINT else f" by {signal.Signals(status - 128).name}"
    print(f"Interrupted{by}{then}", file=sys.stderr)
    sys.exit(status)


def terminate_as_ctrl_c() -> Any:
    """SIGTERM (a scheduler's) ends the command as Ctrl-C does, not silently, outside training
    (which has its own handler); returns the handler it replaced, None off the main thread."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")  # the name `launch.interrupted` reads

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def full_error() -> bool:
    """Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1)."""
    return os.environ.get(ASKED, os.environ.get(FULL_ERROR)) == "1"


def report(error: Exception) -> int:
    """Print an error that stopped Hydra or a run; returns the exit status."""
    # one write a line: under torchrun, its own log lines share this stream
    if (message := explain(error, sys.argv[1:])) is not None:
        sys.stderr.write(f"Config error: {message}\n")
        return CONFIG_ERROR
    if isinstance(error, RankFailed):  # the failed rank printed its own traceback
        sys.stderr.write(f"Failed: {error}\n")
        return 1
    if isinstance(error, CompactHydraException):  # as Hydra prints it: no traceback
        print(error, file=sys.stderr)
        if isinstance(error.__cause__, OmegaConfBaseException):
            print(error.__cause__, file=sys.stderr)
    else:  # an error in a job: its traceback from the task function on, as Hydra shows it
        traceback.print_exception(type(error), error, _below_hydra(error.__traceback__))
    print(f"\nSet the environment variable {FULL_ERROR}=1 for a full stack trace.", file=sys.stderr)
    return 1


def explain(error: Exception, args: Sequence[str]) -> str | None:
    """The runner's one line for an error Hydra raised before the run, or None."""
    if isinstance(error, MissingConfigException) and error.missing_cfg_file in PLUGINS:
        return not_installed(error.missing_cfg_file, PLUGINS[error.missing_cfg_file], args)
    if isinstance(error, MissingConfigException) and error.options:  # `optimizer=adma`
        group, _, name = str(error.missing_cfg_file).rpartition("/")
        said = f"{group}={name} is no option of {group}"
        for key, _, value in (arg.lstrip("+").partition("=") for arg in args):
            if "/" in value and f"{key}/{value}".startswith(f"{group}/"):  # a path, whose
                group, name = key, Path(value).stem  # folders Hydra took for the group's
                said = f"{group}={value}: an option is a file's name, not its path"
        return f"{said}{did_you_mean(name, error.options)}; {group} has: {', '.join(error.options)}"
    if hint := hydra_hints.defaults_hint(error):  # a ValueError, or Hydra's (1.4)
        return hint
    if isinstance(error, ModuleNotFoundError) and error.name in MODULES:
        return not_installed(MODULES[error.name], error.name, args)
    # Hydra's, OmegaConf's, and Python's errors that OmegaConf raises with the key it merged
    merging = (ConfigCompositionException, OmegaConfBaseException, AttributeError)
    if isinstance(error, merging) and (hint := hydra_hints.sweeper_params(error, args)):
        return hint
    if isinstance(error, ConfigCompositionException):
        return (
            hydra_hints.plus_group(error, args)
            or hydra_hints.hydra_hint(error)
            or refused_override(error, chosen_options(args))
        )
    if isinstance(error, OverrideParseException):
        return hydra_hints.unreadable(error)
    if hint := hydra_hints.yaml_error(error):
        return hint
    if isinstance(error, ValueError) and (hint := hydra_hints.group_value(error, args)):
        return hint
    if isinstance(error, OSError) and (hint := hydra_hints.run_dir_hint(error, args)):
        return hint
    if str(error).startswith("BasicSweeper does not support sweep type"):  # interval(...), -m
        search = next((a for a in args if "interval(" in a), "a search")
        return (
            f"{search}: a grid sweep runs lists of values (a,b,c), and a search runs in an "
            f"Optuna sweep: add {SEARCH}=<a file of configs/{SEARCH}/> or hydra/sweeper=optuna"
        )
    if str(error) == "range() arg 3 must not be zero":  # Hydra's range(a, b, 0), grid or search
        zero = next((a for a in args if "range(" in a), "range(...)")
        return f"{zero}: range(start, stop, step) takes a step other than 0"
    if str(error).startswith("Only one of --run, --multirun, --cfg"):  # `-m ... --cfg job`
        return (
            "-m runs a sweep, and --cfg, --info or --shell-completion show something and run "
            "nothing: give one of them (--cfg job without -m, with one value a key)"
        )
    if isinstance(error, SearchPathException):  # `--config-dir nodir`
        return f"{error}; --config-dir takes a directory of config files that exists"
    if isinstance(error, InterpolationResolutionError):  # `optimizer.lr=${oops}`
        named = [arg for arg in args if "${" in arg]
        return (
            f"{named[0] + ': ' if named else ''}{str(error).splitlines()[0]}; ${{...}} names "
            "another key of the config, such as ${trainer.epochs}"
        )
    for raised in (error, error.__cause__):  # the cause: raised in a callback Hydra built
        if isinstance(raised, ConfigError):
            return str(raised)
    return None


def refused_override(error: BaseException, chosen: Mapping[str, str] | None = None) -> str | None:
    """Hydra's refusal of an override whose key the config lacks (`trainer.epoch=5`), or None;
    `chosen` maps a group to its option (`optimizer: adam`)."""
    cause = error.__cause__
    parent, key = getattr(cause, "parent_node", None), getattr(cause, "key", None)
    full_key = str(getattr(cause, "full_key", None) or key)
    if not str(error).startswith("Could not override") or parent is None or key is None:
        return None
    line = str(error).partition("use +")[2].strip() or full_key
    where = full_key.rpartition(".")[0]
    keys = [str(k) for k in parent if k != "hydra" and k not in HYDRA_KEYS]
    keys += [] if where else ["experiment", "hparams_search"]  # groups that add no key
    if where in RUNTIME_ARGS and "_target_" in parent:
        return _not_taken(line, where, str(key), parent, (chosen or {}).get(where))
    if not keys:
        return f"{line}: {where} is null or empty here; add the key with +{line}"
    message = f"{line}: unknown key '{full_key}'{did_you_mean(str(key), keys)}; "
    return message + f"{where or 'the config'} has: {', '.join(keys)}"


def _not_taken(line: str, group: str, key: str, option: Mapping[str, Any], name: str | None) -> str:
    """A key the chosen option does not set: the keys of its file and its `_target_`."""
    target = option["_target_"]
    try:
        takes, open_ended = arguments(locate(group, target), RUNTIME_ARGS[group]) or ([], False)
    except ConfigError:  # a target that does not import
        takes, open_ended = [], False
    takes += [str(k) for k in option if k not in HYDRA_KEYS and k not in takes]
    which = f"the {group} option {name} ({target})" if name else f"the chosen {group} ({target})"
    if key in takes or open_ended:
        return f"{line}: {which} does not set '{key}', which it takes; add it with +{line}"
    return f"{line}: {which} has no key '{key}'{did_you_mean(key, takes)}; " + (
        f"it takes: {', '.join(takes)}" if takes else "it takes none"
    )


def not_installed(option: str, needed: str, args: Sequence[str]) -> str:
    """`hydra/launcher=joblib needs the hydra-joblib-launcher plugin`, and how to install it."""
    group, _, name = option.rpartition("/")
    searches = [a for a in args if a.startswith(f"{SEARCH}=")]
    by = f" (chosen by {searches[-1]})" if searches and group.endswith("sweeper") else ""
    return (
        f"{group}={name}{by} needs {needed}, which is not installed; pip install "
        "'runner[sweep]' brings it (pip install -e '.[sweep]' in a checkout)"
    )


def chosen_options(args: Sequence[str]) -> dict[str, str]:
    """The group options the command line picked (`optimizer=adam`), the last one winning."""
    pairs = (arg.lstrip("+").partition("=") for arg in args)
    return {key: value for key, equals, value in pairs if equals and key in GROUPS}


def _below_hydra(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the task function (the first frame after Hydra's) on, or all of it."""
    first, seen_hydra = tb, False
    while tb is not None:
        in_hydra = str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0] == "hydra"
        if seen_hydra and not in_hydra:
            return tb
        seen_hydra |= in_hydra
        tb = tb.tb_next
    return first


def not_shadowed() -> None:
    """Refuse a chosen option that a `--config-dir` holds under a shipped option's name: Hydra
    reads the runner's own configs first, so the user's file would be passed over in silence."""
    if not HydraConfig.initialized():
        return
    runtime = HydraConfig.get().runtime
    sources = runtime.config_sources
    own = [Path(s.path) for s in sources if s.schema == "file" and s.provider != "main"]
    for group, option in runtime.choices.items():
        name = f"{group}/{option}.yaml"
        if option is None or group.startswith("hydra") or not (CONFIGS / name).is_file():
            continue
        for folder in own:
            mine = folder / name
            if mine.is_file() and not filecmp.cmp(mine, CONFIGS / name, shallow=False):
                raise ConfigError(
                    f"{group}={option}: {mine} has the name of a shipped option, "
                    "and Hydra reads the runner's own configs/ first, so yours would be passed "
                    f"over; give it another name (such as {group}={option}_mine)"
                )


def run_job(
    cfg: DictConfig, run_dir: Path, mode: RunMode | None, overrides: Sequence[str]
) -> float:
    from runner.run import run  # torch is imported here, not for `--help` or `--cfg job`
    from runner.train.checkpoint import LAST

    if mode == RunMode.MULTIRUN:
        return sweep_job(cfg, run_dir, overrides)
    try:
        not_shadowed()
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        for group in (SEARCH, "hydra/sweeper"):  # a search, which a single run would leave out
            if choices.get(group) not in (None, "basic"):
                raise ConfigError(
                    f"{group}={choices[group]} is a search, which runs as a sweep: add -m"
                )
        metrics = run(cfg, run_dir, overrides)
    except (ConfigError, RankFailed, InterpolationResolutionError) as e:
        if full_error():
            raise
        sys.exit(report(e))
    except KeyboardInterrupt as e:  # a second Ctrl-C, or SIGTERM as trainer.devices=N starts
        resume_from = f"; continue from its last checkpoint with trainer.resume={run_dir}"
        exit_interrupted(e, resume_from if (run_dir / LAST).is_file() else "")
    if metrics["status"] != "completed":  # 1, or as a shell says a signal: 130 SIGINT, 143 SIGTERM
        sys.exit(exit_status(metrics))
    return metrics["objective"]  # finite, or +inf


def sweep_job(cfg: DictConfig, run_dir: Path, overrides: Sequence[str]) -> float:
    """One job of a sweep: a failure is its metrics.json with objective +inf; only a directory
    holding another run's results stops the sweep (Hydra's sweepers stop at a job that raises)."""
    from runner.run import record, run, write_json
    from runner.train import checkpoint
    from runner.train.checkpoint import InUse, Occupied

    source = None
    with suppress(ConfigError):  # a trainer.resume with no checkpoint: the run says so
        source = checkpoint.locate(OmegaConf.select(cfg, "trainer.resume"), run_dir)
    # as a job starts, so the sweep can tell it started (sweep/resume.py); a directory with
    # results holds an earlier start's, or another run's, which the run refuses
    if checkpoint.foreign(run_dir, source) is None:
        record(cfg, run_dir)
    if LATE:  # a signal as the previous job ended: the sweep ends here, as between two jobs
        raise KeyboardInterrupt(LATE.pop())
    sweep_dir = Path(HydraConfig.get().sweep.dir).absolute()
    if not basic_launcher() and threading.current_thread() is threading.main_thread():
        # a worker: the sweep's process takes Ctrl-C and SIGTERM (the run, its own while it
        # trains); an idle worker's KeyboardInterrupt, or its death, broke joblib's pool
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    if (earlier := resume.pick_up(cfg, run_dir, sweep_dir, overrides)) is not None:
        return earlier  # the objective of a job completed earlier, not run again
    if (sweep_dir / STOP).exists():  # Ctrl-C reached a joblib sweep (`Summary`): start no job
        write_json(run_dir / "metrics.json", NOT_STARTED)
        return math.inf
    try:
        not_shadowed()
        metrics = run(cfg, run_dir, overrides, sweep_dir)
    except Occupied as e:  # two jobs named alike (hydra.sweep.subdir), or a stray run there
        found = "a run still going" if isinstance(e, InUse) else "a run it did not start"
        what = "" if isinstance(e, InUse) else " (metrics.json or a checkpoint)"
        told = (
            f"the sweep's job {run_dir.name!r} found {found} in its directory{what}, and "
            f"leaves it as it is; move it out of "
            f"{str(sweep_dir)!r} and run the sweep again, or pick a new hydra.sweep.dir (a "
            "hydra.sweep.subdir that names two jobs alike sends both to one directory)"
        )
        if basic_launcher():  # whose sweeper would run the rest of the grid before it stops
            print(f"Config error: {told}", file=sys.stderr)
            sys.exit(CONFIG_ERROR)
        raise Occupied(told) from e  # parallel jobs: after those running beside it
    except Exception as e:
        error = f"{type(e).__name__}: {e}".removesuffix(": ")
        log.error(f"Failed: {error}", exc_info=full_error())
        if world().rank == 0:  # not another DDP rank (a SLURM task): rank 0 writes the job's
            failed = {"status": "failed", "error": error, "objective": None}
            earlier = resume.read_metrics(run_dir)  # this run's, if it wrote any ("failed")
            kept = earlier if earlier.get("status") == "failed" else {}  # not a resumed one's
            write_json(run_dir / "metrics.json", kept | failed)
        return math.inf
    if metrics["status"] == "interrupted":
        # in the process that started the sweep (Hydra's basic launcher), Ctrl-C or SIGTERM
        # stops the sweep, not only this job; a joblib worker's or submitit job's exit would fail it
        if basic_launcher():
            log.error("Interrupted: the sweep stops here")  # the job said how to finish it
            # hydra-core 1.3 never reaches the callback's end, 1.4 does: then it only exits
            summarise(sweep_dir, HydraConfig.get().sweeper.get("direction") == "maximize")
            stop_jobs(sweep_dir, metrics.get("signal") or "SIGINT")
            sys.exit(exit_status(metrics))
        return math.inf  # a worker or a cluster job was stopped (a time limit): the others go on
    if metrics.get("late_signal") and basic_launcher():  # Ctrl-C as the run ended (its figures):
        LATE[:] = [metrics["late_signal"]]  # the job counts (a trial is told), the next stops
    return metrics["objective"]


def basic_launcher() -> bool:
    """Hydra's default launcher, which runs the jobs one by one in this process."""
    return str(HydraConfig.get().launcher._target_).endswith(".BasicLauncher")

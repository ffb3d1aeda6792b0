"""Finishing a grid sweep: the same multirun in the same `hydra.sweep.dir` runs what is left.
`check` records the earlier jobs at the sweep's start (a job's `.hydra/` is rewritten when the
job starts); `pick_up` takes up what a job's directory holds."""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from runner.config.check import ConfigError

log = logging.getLogger("runner")

RECORD = ".earlier_jobs.json"  # in the sweep directory, from the sweep's start to its end


@dataclass(frozen=True)
class Job:
    """A job an earlier run of the sweep left in the sweep directory."""

    num: int
    dir: str  # relative to the sweep directory
    overrides: list[str]
    status: str | None  # what its metrics.json says; None when it has none


def check(config: DictConfig) -> None:
    """Record the jobs an earlier run of this sweep left; a different sweep is a ConfigError."""
    sweep_dir = Path(config.hydra.sweep.dir).absolute()
    (sweep_dir / RECORD).unlink(missing_ok=True)  # a killed sweep's record is not this one's
    grid = str(config.hydra.sweeper.get("_target_")).endswith(".BasicSweeper")
    earlier = earlier_jobs(sweep_dir) if grid else []
    if not earlier:
        return
    problem = difference(earlier, planned_jobs(config, sweep_dir))
    if problem is not None:
        raise ConfigError(
            f"hydra.sweep.dir={str(sweep_dir)!r} holds a different sweep: {problem}; run the "
            "command that started it to finish it, or pick a new hydra.sweep.dir"
        )
    text = json.dumps({"jobs": [asdict(job) for job in earlier]}, indent=1)
    (sweep_dir / RECORD).write_text(text + "\n")


def earlier_jobs(sweep_dir: Path) -> list[Job]:
    jobs = []
    for run_dir, num, overrides in job_dirs(sweep_dir):
        status = read_metrics(run_dir).get("status")
        jobs.append(Job(num, run_dir.relative_to(sweep_dir).as_posix(), overrides, status))
    return jobs


def job_dirs(sweep_dir: Path) -> list[tuple[Path, int, list[str]]]:
    """The job directories under `sweep_dir`, their numbers and overrides: not a single run's
    (numbered `???`), nor one whose `.hydra/` a kill cut short (it never started: it runs anew)."""
    jobs = []
    for path in sorted(sweep_dir.glob("**/.hydra/hydra.yaml")):
        run_dir = path.parent.parent
        try:
            num = read_yaml(path)["hydra"]["job"].get("num")
            overrides = read_yaml(path.with_name("overrides.yaml"))
        except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError):
            continue
        if run_dir != sweep_dir and isinstance(overrides, list) and type(num) is int:  # not bool
            jobs.append((run_dir, num, [str(o) for o in overrides]))
    return jobs


def planned_jobs(config: DictConfig, sweep_dir: Path) -> list[list[str]]:
    """Each job's overrides as Hydra's grid sweeper makes them: a key given twice takes its
    first place and its last value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    params = config.hydra.sweeper.get("params") or {}
    given = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    choices: dict[str, list[str]] = {}
    try:
        for override in OverridesParser.create().parse_overrides(given):
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices[key] = [f"{key}={override.get_value_element_as_str()}"]
            elif override.is_discrete_sweep():
                choices[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
            else:
                raise HydraException(f"{key} is not a list of values")
    except HydraException as e:  # glob(...) needs the config loader, which callbacks lack
        raise ConfigError(
            f"hydra.sweep.dir={str(sweep_dir)!r} already holds a sweep, and this sweep's jobs "
            f"cannot be listed before they run to check it is the same one ({e}); pick a new "
            "hydra.sweep.dir"
        ) from e
    return [list(job) for job in itertools.product(*choices.values())]


def difference(earlier: list[Job], planned: list[list[str]]) -> str | None:
    """How the earlier jobs differ from the planned ones (their order aside), or None."""
    for job in earlier:
        if job.num >= len(planned):
            return f"it has a job {job.num} ({' '.join(job.overrides)}), this sweep has none"
        then, now = meanings(job.overrides), meanings(planned[job.num])
        if sorted(then) != sorted(now):
            had = " ".join(o for o, meaning in zip(job.overrides, then) if meaning not in now)
            has = " ".join(o for o, meaning in zip(planned[job.num], now) if meaning not in then)
            if not has:
                return f"its job {job.num} had {had}, which this sweep's job {job.num} lacks"
            if not had:
                return f"its job {job.num} lacked {has}, which this sweep's job {job.num} has"
            return f"its job {job.num} had {had} where this sweep's job {job.num} has {has}"
        if sorted(job.overrides) != sorted(planned[job.num]):  # the same values, typed otherwise
            had = " ".join(o for o in job.overrides if o not in planned[job.num])
            has = " ".join(o for o in planned[job.num] if o not in job.overrides)
            return (
                f"its job {job.num} had {had} where this sweep's job {job.num} has {has}, the "
                "same value quoted otherwise, which names other job directories"
            )
    return None


def meanings(overrides: Sequence[str]) -> list[str]:
    """Each override as the config takes it: `f="2*x+1"` and `f=2*x+1` are one value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:  # not Hydra's syntax: as written
        return list(overrides)
    return [f"{o.get_key_element()}={o.value()!r}" for o in parsed]


def pick_up(
    cfg: DictConfig, run_dir: Path, sweep_dir: Path, overrides: Sequence[str]
) -> float | None:
    """The objective of a job that completed earlier, which is not run again; otherwise None,
    and it runs on from its checkpoint or afresh, so that no tag's steps go backwards."""
    from runner.train.checkpoint import LAST  # torch: imported by the job, not by the CLI

    if run_dir.absolute() not in {sweep_dir / job["dir"] for job in record(sweep_dir)}:
        return None  # a job the sweep's start did not record: a new one
    metrics = read_metrics(run_dir)
    if sorted(meanings(metrics.get("overrides", overrides))) != sorted(meanings(overrides)):
        # another run's results, whose `.hydra/` the job leaves as it is: the run refuses the
        # directory (none recorded: written before the runner kept them)
        return None
    status = metrics.get("status")
    if status == "completed":
        objective = metrics.get("objective")
        value = math.inf if objective is None else float(objective)
        log.info(f"Completed earlier, not run again (objective {value:.6g}): {run_dir}")
        return value
    # a run killed mid-way has no metrics.json at all
    if status in (None, "interrupted") and (run_dir / LAST).is_file():
        OmegaConf.update(cfg, "trainer.resume", str(run_dir), force_add=True)
    else:
        start_over(run_dir)
        log.info(f"Running again afresh (it was {status or 'stopped'} before): {run_dir}")
    return None


def start_over(run_dir: Path) -> None:
    """Clear what an earlier run wrote, but `.hydra/` (this job's, from its earlier start), the
    open log and the lock (a run still going there holds it)."""
    from runner.train.checkpoint import LOCK

    for path in run_dir.iterdir():
        if path.name in (".hydra", LOCK) or path.suffix == ".log":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def finish(sweep_dir: Path) -> None:
    """Say how many jobs completed earlier, and remove the record."""
    skipped = sum(job["status"] == "completed" for job in record(sweep_dir))
    (sweep_dir / RECORD).unlink(missing_ok=True)
    if skipped:
        print(f"{skipped} completed earlier, not run again")


def record(sweep_dir: Path) -> list[dict[str, Any]]:
    """The jobs the sweep's start recorded; none outside a grid sweep."""
    path = sweep_dir / RECORD
    return json.loads(path.read_text())["jobs"] if path.is_file() else []


def read_yaml(path: Path) -> Any:
    """A `.hydra/` file, with libyaml's parser where PyYAML has it: a sweep reads many."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The job's metrics.json; empty when it is missing or unreadable (the run was killed)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}

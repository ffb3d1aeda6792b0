"""The start and end of a sweep: job directories named by what varies, a clean Ctrl-C for
joblib, and at the end `summary.csv`, the table printed best first, and the exit status. It
reads only what each job left in its own directory, so any launcher works alike."""

from __future__ import annotations

import csv
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import RangeSweep
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

from runner.config.check import ConfigError, check_choice
from runner.config.hydra_hints import run_dir_hint
from runner.sweep import resume

COLUMNS = ("job", "overrides", "status", "objective", "final_loss", "best_loss", "val_loss")
COLUMNS += ("steps", "duration_s", "run_dir", "error")
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"  # its _target_
STOP = ".interrupted"  # the signal's name, once Ctrl-C or SIGTERM reached a joblib sweep
NOT_STARTED = {"status": "interrupted", "error": "not started: the sweep was interrupted"}
REPEAT_S = 0.02  # a second signal sooner than this is the first one delivered again
# ties: lower objective; a pruned trial (an Optuna search) after the completed ones
ORDER = {"completed": 0, "pruned": 1, "interrupted": 2, "diverged": 3, "failed": 4}
SCORED = ("completed", "pruned")  # whose objective the sweeper saw
EXCLUDE = "hydra.job.config.override_dirname.exclude_keys"  # what the job names leave out


class Summary(Callback):
    """`hydra.callbacks.summary`: summary.csv, and the sweep's exit status: 1 when any job did
    not complete (`fail_on: any`, a grid) or none did (`fail_on: all`, a search, where a
    diverged trial is just a bad +inf one); 130 when Ctrl-C stopped a joblib sweep."""

    # the sweep this process runs (its dir, whether it maximises), which a Ctrl-C between two
    # jobs ends in runner.cli, past this callback's end on hydra-core 1.3
    under_way: tuple[Path, bool] | None = None

    def __init__(self, fail_on: str = "any") -> None:
        check_choice("hydra.callbacks.summary.fail_on", fail_on, ("any", "all"))
        self.fail_on = fail_on
        self.started = False  # the sweep passed the start's checks (hydra-core 1.4 ends it anyway)
        self.stop: Path | None = None  # the stop file, while a joblib sweep runs
        self.stopped_at = 0.0  # when the first signal wrote it (time.monotonic)
        self.previous: dict[int, Any] = {}  # the SIGINT and SIGTERM handlers before it

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:  # a different sweep in this sweep dir stops before any job
            if config.hydra.launcher.get("n_jobs", 1) == 0:  # joblib's: cores, -1 all of them
                raise ConfigError("hydra.launcher.n_jobs=0 runs no job; use 1 or more, or -1")
            empty_ranges(config.hydra.overrides.task)
            resume.check(config)
        except ConfigError as e:  # ends as runner.cli ends a bad config: Hydra would only warn
            print(f"Config error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except Exception as e:  # Hydra would warn, then run every job again, unsummarised
            if isinstance(e, OSError) and (told := run_dir_hint(e, sys.argv[1:])):
                print(f"Config error: {told}", file=sys.stderr)
                raise SystemExit(2) from None
            print(f"Failed: the sweep's start: {type(e).__name__}: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        self.started = True
        name_jobs_by_what_varies(config)
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        Summary.under_way = (sweep_dir, config.hydra.sweeper.get("direction") == "maximize")
        (sweep_dir / STOP).unlink(missing_ok=True)  # an old one
        # Left to joblib, Ctrl-C ended the workers before their jobs wrote anything (SIGTERM left
        # them running): a stop file stops running jobs at a log step; queued ones do not start.
        if config.hydra.launcher.get("_target_") == JOBLIB:
            fit_workers(config)
            if threading.current_thread() is threading.main_thread():  # the one that gets signals
                self.stop = sweep_dir / STOP
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self.previous[sig] = signal.signal(sig, self._interrupted)

    def _interrupted(self, signum: int, frame: Any) -> None:
        assert self.stop is not None
        if self.stop.exists() and time.monotonic() - self.stopped_at < REPEAT_S:
            return  # one signal sent twice: `timeout` sends it to the process, then its group
        if self.stop.exists():  # the second: joblib ends its workers, and the sweep ends here
            print("Interrupted again: stopped at once", file=sys.stderr)
            raise SystemExit(128 + signum)  # no traceback, as with the basic launcher
        self.stopped_at = time.monotonic()
        stop_jobs(self.stop.parent, signal.Signals(signum).name)
        print(
            "Interrupted: running jobs stop at their next log step, the others do not start "
            "(Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if isinstance(sys.exc_info()[1], Exception | KeyboardInterrupt):  # hydra-core 1.4 calls
            return  # it on the way out of an error or a Ctrl-C, which runner.cli ends as on 1.3
        Summary.under_way = None
        if not self.started:  # refused at the start: nothing of this sweep to summarise
            return
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        sweep_dir = Path(config.hydra.sweep.dir).absolute()  # run dirs print absolute too
        stop = sweep_dir / STOP
        by = stop.read_text().strip() if stop.exists() else None  # the signal that stopped it
        stop.unlink(missing_ok=True)
        if by is not None and self.stop is None:  # a basic launcher's job summarised and exits
            raise SystemExit(128 + signal.Signals[by])  # (hydra-core 1.4 ends the sweep here too)
        self.stop = None
        if not sweep_dir.is_dir():  # the sweep stopped before its first job (hydra-core 1.4)
            return
        rows = summarise(sweep_dir, config.hydra.sweeper.get("direction") == "maximize")
        if by is not None:  # the shell's convention: 130 SIGINT, 143 SIGTERM
            raise SystemExit(128 + signal.Signals[by])
        completed = sum(r["status"] == "completed" for r in rows)
        # no rows: a shared study that other searches have filled, where nothing failed
        if rows and (completed == 0 or (self.fail_on == "any" and completed < len(rows))):
            raise SystemExit(1)  # it passes through Hydra (which catches Exception): exit status


def fit_workers(config: DictConfig) -> None:
    """No more joblib workers than jobs at a time: a worker that never ran a job would take
    a terminal's Ctrl-C as a KeyboardInterrupt, which breaks joblib's pool."""
    asked = config.hydra.launcher.get("n_jobs") or 1  # joblib's -1: every core, -2: but one
    workers = asked if asked > 0 else max((os.cpu_count() or 1) + 1 + asked, 1)
    if str(config.hydra.sweeper.get("_target_")).endswith(".BasicSweeper"):
        try:
            at_once = len(resume.planned_jobs(config, Path(config.hydra.sweep.dir)))
        except ConfigError:  # jobs it cannot list before they run
            return
    else:  # a search asks for its trials n_jobs at a time
        at_once = config.hydra.sweeper.get("n_jobs") or workers
    n_jobs = min(workers, at_once)
    with read_write(config.hydra):  # and the jobs' configs alike, which hydra-core 1.4 checks
        config.hydra.launcher.n_jobs = n_jobs
        config.hydra.overrides.hydra.append(f"hydra.launcher.n_jobs={n_jobs}")


def stop_jobs(sweep_dir: Path, signal_name: str) -> None:
    """The stop file: the jobs read it (sweep/trial.py), whole, by a rename, never empty."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    part = sweep_dir / f"{STOP}.part"
    part.write_text(signal_name)
    part.replace(sweep_dir / STOP)


def summarise(sweep_dir: Path, maximize: bool = False) -> list[dict[str, Any]]:
    """summary.csv and the printed table, from what each job left in its directory."""
    rows = collect(sweep_dir, maximize)
    # None as an empty cell; floats as Python writes them, the shortest exact text
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(table(rows, sweep_dir))
    resume.finish(sweep_dir)
    return rows


def empty_ranges(overrides: list[str]) -> None:
    """A grid's `range(5,1)` holds no value, and the sweep would launch no job at all."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        value = override.value()  # a step of 0 is the sweeper's to refuse, in its words
        if isinstance(value, RangeSweep) and value.step and not list(override.sweep_iterator()):
            raise ConfigError(
                f"{override.input_line} holds no value: range(start, stop) counts up from start "
                "to below stop (range(5,1,-1) counts down); the sweep would run no job"
            )


def name_jobs_by_what_varies(config: DictConfig) -> None:
    """Job directories named by the overrides that differ (`3_optimizer.lr=0.2,seed=2`), through
    `hydra.overrides.hydra`, which every job's config is composed from, for any launcher."""
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    varied = {o.key_or_group for o in overrides if o.is_sweep_override()}
    varied |= set(config.hydra.sweeper.get("params") or {})
    shared = [o.key_or_group for o in overrides if o.key_or_group not in varied]
    if not varied or not shared:  # a one-job sweep keeps every override in its name
        return
    keys = [*config.hydra.job.config.override_dirname.exclude_keys, *shared]
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.append(f"{EXCLUDE}=[{','.join(map(quote, keys))}]")


def quote(text: str) -> str:
    """`text` quoted for Hydra's override grammar, which then takes it as it is."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def collect(sweep_dir: Path, maximize: bool = False) -> list[dict[str, Any]]:
    """One row per job directory under the sweep, best first: the highest objective first for
    a search that maximizes it, where a job that did not complete scores -inf, as in its study."""
    sign = -1 if maximize else 1
    rows = [job_row(*job, sign * math.inf) for job in resume.job_dirs(sweep_dir)]
    return sorted(rows, key=lambda row: rank(row, sign))


def rank(row: Mapping[str, Any], sign: int = 1) -> tuple[int, float, int]:
    """By status, then objective (-1: the highest first), then job number."""
    return ORDER.get(row["status"], len(ORDER)), sign * float(row["objective"]), row["job"]


def job_row(run_dir: Path, num: int, overrides: list[str], worst: float) -> dict[str, Any]:
    metrics = resume.read_metrics(run_dir) or {
        "status": "failed",
        "error": f"no metrics.json to read: the job stopped before writing one (see {run_dir})",
    }
    status = metrics.get("status", "failed")
    objective = metrics.get("objective")
    return {key: metrics.get(key) for key in COLUMNS} | {
        "job": num,
        "overrides": " ".join(overrides),
        "status": status,
        # as the sweeper saw it: the worst for a job that neither completed nor was pruned
        "objective": objective if status in SCORED and objective is not None else worst,
        "run_dir": str(run_dir),
    }


def table(rows: list[dict[str, Any]], sweep_dir: Path) -> str:
    """The rows as a terminal table, with only the overrides that differ between jobs."""
    if not rows:
        return f"Sweep summary: no job ran under {sweep_dir}"
    split = [r["overrides"].split() for r in rows]
    common = [o for o in split[0] if all(o in s for s in split)] if len(rows) > 1 else []
    hidden = ("overrides", "error")  # the overrides go last, errors below the table
    columns = [c for c in COLUMNS if c not in hidden and any(r[c] is not None for r in rows)]
    lines = [[*columns, "overrides"]]
    for row, overrides in zip(rows, split, strict=True):
        cells = [_cell(row[c], c, sweep_dir) for c in columns]
        lines.append([*cells, " ".join(o for o in overrides if o not in common)])
    widths = [max(map(len, column)) for column in zip(*lines)]
    jobs = f"{len(rows)} job{'s' * (len(rows) > 1)}"
    text = [f"Sweep summary ({jobs}, best first): {sweep_dir / 'summary.csv'}"]
    if common:
        text.append(f"all jobs: {' '.join(common)}")
    text += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    failures: dict[tuple[str, str], list[str]] = {}  # one line for the jobs an error shares
    for r in rows:
        if r["error"]:
            failures.setdefault((r["status"], r["error"]), []).append(str(r["job"]))
    for (status, error), nums in failures.items():
        text.append(f"job{'s' * (len(nums) > 1)} {', '.join(nums)} {status}: {error}")
    counts = Counter(r["status"] for r in rows)
    text.append(", ".join(f"{n} {status}" for status, n in counts.items()))
    return "\n".join(text)


def _cell(value: Any, column: str, sweep_dir: Path) -> str:
    if value is None:
        return "-"
    if column == "run_dir":  # under sweep_dir: `collect` found it there
        return str(Path(value).relative_to(sweep_dir))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)

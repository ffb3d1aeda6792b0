"""A sweep job's side of the sweep: it reports to its Optuna trial and stops when pruned, or
stops at a log step when Ctrl-C or SIGTERM reached only a joblib sweep's process."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Mapping
from pathlib import Path

from runner.observe import Look, Observer
from runner.sweep.study import PRUNER, STORAGE, STUDY, TRIAL, open_storage
from runner.sweep.summary import STOP
from runner.train.state import State

log = logging.getLogger(__name__)


def reporting(objective: str, env: Mapping[str, str] = os.environ) -> list[Observer]:
    """The trial's reporter for a job of an Optuna search; nothing for any other run."""
    if TRIAL not in env:
        return []
    return [TrialReport(env[STORAGE], env[STUDY], int(env[TRIAL]), objective)]


class TrialReport(Observer):
    def __init__(self, where: str, study_name: str, number: int, objective: str) -> None:
        import optuna
        from hydra.utils import instantiate

        self.storage = storage = open_storage(where)
        self.study = optuna.load_study(study_name=study_name, storage=storage)
        pruner = self.study.user_attrs.get(PRUNER)  # the sweeper's `pruner`, as a plain dict
        self.pruner = None if pruner is None else instantiate(pruner)
        study_id = storage.get_study_id_from_name(study_name)
        self.trial: int | None = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.number, self.objective = number, objective

    def log(self, look: Look) -> None:
        if self.objective != "val_loss" and look.state.status == "running":
            self.report(look.state, look.step, float(look.loss))  # a host sync, at log steps

    def epoch(self, state: State) -> None:
        if self.objective == "val_loss" and state.val_loss is not None:
            self.report(state, state.step - 1, float(state.val_loss))  # the epoch's last step

    def report(self, state: State, step: int, value: float) -> None:
        """Record the objective at `step`; a pruned run ends after this step (every rank
        agrees on it at the next log step or epoch end)."""
        import optuna

        if self.trial is None or not math.isfinite(value):
            return
        try:
            self.storage.set_trial_intermediate_value(self.trial, step, value)
            if (  # an early stop at this epoch's end stands: the run completed
                state.status == "running"
                and self.pruner is not None
                and self.pruner.prune(self.study, self.storage.get_trial(self.trial))
            ):
                state.status = "pruned"
                log.info(f"Pruned: trial {self.number} stopped by the study's pruner")
        except optuna.exceptions.UpdateFinishedTrialError:  # the study ended it: train on
            log.warning(f"Trial {self.number} is already finished in its study; not reporting")
            self.trial = None


class Stopped(Observer):
    """Stops the job, keeping its checkpoint, at the stop file `Summary` writes, or once a joblib
    worker's sweep process died (SIGKILL) unwritten, rather than train on beside the next run."""

    def __init__(self, sweep_dir: Path) -> None:
        self.stop = sweep_dir / STOP
        sweep = multiprocessing.parent_process()  # None: this is the sweep's own process
        self.sweep = None if sweep is None else sweep.pid

    def log(self, look: Look) -> None:
        if look.state.status != "running":
            return
        if self.stop.exists():
            look.state.status = "interrupted"  # the loop ends after this step
            look.state.signal = self.stop.read_text().strip() or "SIGINT"
        elif self.sweep is not None and os.getppid() != self.sweep:  # orphaned
            look.state.status = "interrupted"

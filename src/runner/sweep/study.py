"""Where an Optuna search's study lives, and how a job finds its own trial in it.

The sweeper and each of its jobs open the same storage: by default Optuna's journal file in
the sweep directory (appended to under a file lock, so parallel jobs on one machine, or on a
shared file system, write to it safely), or any Optuna storage URL. The sweeper tells each
job its trial through environment variables that Hydra sets for that job
(`hydra.job.env_set`): a `hydra.` override, so they stay out of the job's directory name,
its `.hydra/overrides.yaml` and its HParams columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

TRIAL = "RUNNER_OPTUNA_TRIAL"  # the job's trial number
STUDY = "RUNNER_OPTUNA_STUDY"  # the study's name
STORAGE = "RUNNER_OPTUNA_STORAGE"  # a storage URL, or the journal file's absolute path
JOURNAL = "optuna.journal"  # the default storage, in the sweep directory
PRUNER = "runner:pruner"  # the study's user attribute: the pruner's config, for the jobs
SWEEP_DIR = "runner:sweep_dir"  # a trial's user attribute: the sweep directory that ran it


def location(storage: str | None, sweep_dir: Path) -> str:
    """`hydra.sweeper.storage` as every job can open it: a URL, or an absolute file path."""
    if storage is None:
        return str(sweep_dir.absolute() / JOURNAL)
    return storage if "://" in storage else str(Path(storage).absolute())


def open_storage(where: str) -> BaseStorage:
    """A URL (`sqlite:///optuna.db`, `postgresql://...`) is Optuna's database storage; a
    path is a journal file, which `optuna-dashboard <path>` opens as well."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in where:
        return optuna.storages.get_storage(where)
    Path(where).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(where))


def trial_id(storage: BaseStorage, study_name: str, number: int) -> int:
    """The storage's id of a trial known by its number (what the study shows)."""
    study_id = storage.get_study_id_from_name(study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)

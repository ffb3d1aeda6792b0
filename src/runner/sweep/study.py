"""Where an Optuna search's study lives, and how a job finds its trial: environment variables
(`hydra.job.env_set`), which stay out of its directory name, overrides.yaml and HParams."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from runner.config.check import ConfigError

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
    """A URL is Optuna's database storage; a path is a journal file (written under a file lock,
    so parallel jobs share it), which `optuna-dashboard <path>` opens as well."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    try:
        if "://" not in where:
            Path(where).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(where))
        if where.startswith("sqlite:///"):  # its directory, made as a journal file's is
            Path(where.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.get_storage(where)
    except Exception as e:  # no driver, no server, a bad URL or path: the user's setting
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, FileExistsError | NotADirectoryError):  # a folder on the way is a file
            reason = f"{e.filename} is a file, not a directory"
        raise ConfigError(
            f"hydra.sweeper.storage={shown(where)!r} cannot be opened: {reason}"
        ) from e


def shown(where: str) -> str:
    """A storage URL as messages show it: a password masked, as SQLAlchemy shows one."""
    return re.sub(r"(://[^/@:]*:)[^/]*@", r"\1***@", where)

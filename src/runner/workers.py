"""Sweep workers that start warm: joblib's workers fork from a process that has already
imported torch, TensorBoard and matplotlib, instead of each importing them.

Hydra's joblib launcher runs jobs in loky worker processes, and loky starts each one as a
fresh Python that imports everything before its first job: ~4-5 s of CPU a worker, as
much as several short jobs. So when the launcher is joblib, the sweep process starts one
`multiprocessing` forkserver as early as it can (`start`), which imports all of that once
(`runner.preload`) while the sweep process composes and checks the jobs' configs, and
tells loky to fork its workers from it. Everything else stays joblib's and loky's: the
launcher's keys, cloudpickle, a worker that dies reported as an error.

A forked worker then differs from a spawned one in two ways, both settled in the job
(`runner.cli.run_job`): torch is already loaded, so the thread count loky would put in a
fresh worker's environment (cores // workers) is set on torch (`settle`); and figures are
drawn in the worker itself, as matplotlib is loaded and the other workers' jobs keep the
other cores busy.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

PRELOAD = "runner.preload"  # what the forkserver imports; in a worker, it is in sys.modules
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def start_if_asked(argv: list[str]) -> bool:
    """Start the forkserver now if the command line asks for a joblib sweep: ~0.5 s sooner
    than the callback can (after Hydra's import and a first composition), and its imports
    take longer than the sweep process's checks. A launcher chosen in a config file is
    seen by the callback instead (`runner.sweep.Preload`)."""
    sweep = "-m" in argv or "--multirun" in argv
    if sweep and "hydra/launcher=joblib" in argv and "~hydra.callbacks.preload" not in argv:
        return start()
    return False


def start() -> bool:
    """Start the preloading forkserver and make it loky's way to start workers; returns
    whether loky will use it (not where there is no forkserver, as on Windows, nor where
    this process already chose another start method for loky)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    from joblib.externals.loky.backend.context import get_start_method, set_start_method

    if get_start_method() not in (None, "forkserver"):
        return False
    multiprocessing.set_forkserver_preload([PRELOAD])  # no effect once the server runs
    forkserver.ensure_running()  # returns at once: the server imports on its own
    set_start_method("forkserver", force=True)
    return True


def in_worker() -> bool:
    """Whether this process was forked from the preloading forkserver."""
    return PRELOAD in sys.modules


def settle(n_jobs: int) -> int:
    """In a forked worker: give torch the threads loky gives a worker it spawns, cores //
    workers (unless OMP_NUM_THREADS says otherwise, which torch read when it loaded), so
    that the workers do not share the cores' time slices. Returns torch's thread count."""
    import torch
    from joblib import cpu_count

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads_per_worker(n_jobs, cpu_count()))
    return torch.get_num_threads()


def threads_per_worker(n_jobs: int, cpus: int) -> int:
    """joblib's count of workers for `n_jobs` (-1: all cores, -2: all but one, ...), and
    the cores each gets, at least one."""
    workers = n_jobs if n_jobs > 0 else max(cpus + 1 + n_jobs, 1)
    return max(cpus // workers, 1)

"""Sweep workers that start warm: joblib's workers fork from a process that has already
imported torch and TensorBoard, and draw their figures with one plotter the sweep shares,
instead of each importing all of that.

Hydra's joblib launcher runs jobs in loky worker processes, and loky starts each one as a
fresh Python that imports everything before its first job: ~4-5 s of CPU a worker, as
much as several short jobs. So when the launcher is joblib, the sweep process starts one
`multiprocessing` forkserver as early as it can (`start`), which imports torch and the
runner once (`runner.preload`) while the sweep process composes and checks the jobs'
configs, and tells loky to fork its workers from it. Everything else stays joblib's and
loky's: the launcher's keys, cloudpickle, a worker that dies reported as an error.

Matplotlib is loaded by neither: a plotter process shared by the sweep's workers
(`SharedPlotter`) loads it at a lower priority, on the core the sweep process leaves idle
once its checks are done, so the first jobs do not wait for it; it then forks a copy of
itself for each worker, which draws that worker's figures as a run's own plotter does.

A forked worker also differs from a spawned one in its threads: torch is already loaded,
so the thread count loky would put in a fresh worker's environment (cores // workers) is
set on torch in the job (`settle`, from `runner.cli.run_job`).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path

from runner.priority import NICE

PRELOAD = "runner.preload"  # what the forkserver imports; in a worker, it is in sys.modules
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
PLOTTER_ADDRESS = "RUNNER_PLOTTER"  # in the forkserver's environment: the shared plotter's socket
SRC = str(Path(__file__).resolve().parents[1])  # a plotter process imports this same runner


def runner_env() -> dict[str, str]:
    """This process's environment with this runner importable first: for the plotter
    processes it starts (`runner.plotter`, `SharedPlotter`)."""
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"PYTHONPATH": path}


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
    address = share_plotter()
    if address is not None:
        os.environ[PLOTTER_ADDRESS] = address
    try:
        forkserver.ensure_running()  # returns at once: the server imports on its own
    finally:
        # the server was started with it, and its workers inherit it; nothing else is
        os.environ.pop(PLOTTER_ADDRESS, None)
    set_start_method("forkserver", force=True)
    return True


class SharedPlotter:
    """One plotter for all the workers of a joblib sweep (`runner.plotter.serve_shared`),
    listening on a unix socket in a folder of its own, from the start of the sweep to the
    end of this process.

    It imports matplotlib and warms up on the core the sweep process leaves idle once it
    has checked the jobs' configs (it runs at a lower priority), instead of in the
    forkserver, whose imports the first jobs wait for (~1 s of them on 2 cores; a joblib
    sweep of 8 shipped `linear_fit` jobs took 7% less time). Then it draws what the
    workers ask, in a copy forked for each worker.
    """

    def __init__(self) -> None:
        import shutil
        import socket
        import subprocess
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="runner-plotter-")
        self.address = os.path.join(self.folder, "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.address)
            listener.listen(64)  # a worker that connects before the plotter is warm waits
            command = [sys.executable, "-m", "runner.plotter", "--shared", str(listener.fileno())]
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,  # closed when this process ends: the plotter ends too
                pass_fds=[listener.fileno()],
                env=runner_env(),
            )
        except OSError:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        finally:
            listener.close()
        with contextlib.suppress(AttributeError, OSError):  # lower at once: even its imports
            priority = os.getpriority(os.PRIO_PROCESS, 0) + NICE  # wait for an idle core
            os.setpriority(os.PRIO_PROCESS, self.process.pid, min(priority, 19))
        atexit.register(self.close)

    def close(self) -> None:
        import shutil
        import subprocess

        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_shared: SharedPlotter | None = None


def share_plotter() -> str | None:
    """Start the sweep's shared plotter, once, and return the address its workers connect
    to; None where there is nothing to draw with (no matplotlib) or no unix sockets."""
    import socket

    global _shared
    if importlib.util.find_spec("matplotlib") is None or not hasattr(socket, "AF_UNIX"):
        return None
    if _shared is None or _shared.process.poll() is not None:
        try:
            _shared = SharedPlotter()
        except OSError as e:
            print(f"runner: each worker draws its own figures ({e})", file=sys.stderr)
            return None
    return _shared.address


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

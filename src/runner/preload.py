"""Start importing torch while Hydra starts up, for `python -m runner` and the `runner` script.

`import torch` takes most of a short run's wall time (~1.5-3 s on a small CPU), and most of
it is reading files and loading shared libraries, which release the GIL. Hydra's own
start-up (its import, composing the config twice, the run directory, logging) is ~0.6 s of
Python that needs no torch. On a thread of its own the torch import overlaps all of that
instead of following it; the run's own `import torch` then finds it done (or waits for it).
Commands that only print (`--help`, `--cfg job`, `--info`, shell completion) skip it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

PRINT_ONLY = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion")
PRINT_ONLY += ("-sc", "--version")


def _import_torch() -> None:
    with contextlib.suppress(Exception):  # the run imports it again and reports a failure
        import torch  # noqa: F401


def import_torch_in_background(args: Sequence[str]) -> threading.Thread | None:
    """A non-daemon thread: the interpreter never exits in the middle of the import."""
    if any(arg.split("=", 1)[0] in PRINT_ONLY for arg in args):
        return None
    thread = threading.Thread(target=_import_torch, name="import torch")
    thread.start()
    return thread

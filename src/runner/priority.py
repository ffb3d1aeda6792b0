"""Background work that must not slow training: the TensorBoard writer thread and the
plotter process use the cores' spare time.

With as many torch threads as cores, a parallel op waits at its barrier for every thread; a
writer or plotter that takes a core for a scheduler time slice (milliseconds) stalls the op
for that long. Under Linux's SCHED_IDLE a thread runs only where a core would idle, and a
training thread that wakes takes the core back at once: the writer thread runs so. The
plotter, which the run waits for at the end, stays at a plain `nice` (a SCHED_IDLE process
cannot be raised again, and other users' work could starve it) and draws ahead only while
`IdleCores` says a core is spare.
"""

from __future__ import annotations

import os

NICE = 10  # the plotter process's `nice`: below the training process


def spare_time_only(thread_id: int) -> bool:
    """Put a thread of this process under SCHED_IDLE; False where there is none (not Linux).
    No `nice` instead: outside Linux it would lower the whole training process."""
    try:
        os.sched_setscheduler(thread_id, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


class IdleCores:
    """How many cores sat idle between two looks, from Linux's /proc/stat: the plotter draws
    ahead only when the training process leaves a core to it. None where it cannot tell.

    A look too soon after the last one (under MIN_JIFFIES) says little: it gives the last
    answer again and leaves the span open, so the next look measures from the same point.
    """

    def __init__(self) -> None:
        self.last = _cpu_times()
        self.answer: float | None = None  # until a span long enough to tell has passed

    def since_last(self) -> float | None:
        now, last = _cpu_times(), self.last
        if now is None or last is None:
            return None
        if now[1] - last[1] < MIN_JIFFIES:
            return self.answer
        self.last = now
        self.answer = (os.cpu_count() or 1) * (now[0] - last[0]) / (now[1] - last[1])
        return self.answer


MIN_JIFFIES = 10  # clock ticks summed over all cores (~0.1 s of CPU time): less says little


def _cpu_times() -> tuple[int, int] | None:
    """(idle, all) clock ticks of every core together since boot."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    return fields[3] + fields[4], sum(fields)  # idle + iowait

"""Which process of a run this one is, from torchrun's variables or a submitit job of several
tasks. Imports no torch, so the entry point can ask before Hydra starts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

FIRST_PORT, PORTS = 20000, 20000  # a submitit job's rank 0 listens on one from its job id


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes on this node
    address: str | None = None  # where rank 0 listens, when no launcher said (submitit)

    @property
    def leader(self) -> bool:
        """Rank 0, the one process that writes the run's files."""
        return self.rank == 0


def world() -> World:
    env = os.environ
    if "WORLD_SIZE" in env:
        size = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_WORLD_SIZE", size))
        return World(int(env.get("RANK", 0)), size, int(env.get("LOCAL_RANK", 0)), local)
    if "SUBMITIT_EXECUTOR" in env:
        import submitit

        job = submitit.JobEnvironment()
        if job.num_tasks > 1:
            digits = int(re.sub(r"\D", "", job.job_id) or 0)
            port = env.get("MASTER_PORT", FIRST_PORT + digits % PORTS)
            host = env.get("MASTER_ADDR", job.hostnames[0])
            local = job.num_tasks // job.num_nodes
            address = f"tcp://{host}:{port}"
            return World(job.global_rank, job.num_tasks, job.local_rank, local, address)
    return World()

"""What a joblib sweep's worker needs before its first job, imported once by the forkserver
its workers fork from (`runner.workers`): torch and the runner, the protobufs TensorBoard
logging writes, and tqdm. Importing this module does that work; nothing else imports it.

It is the sweep's critical path, ~2.5 s of CPU (most of it torch) that the workers wait
for while the sweep process checks the jobs' configs: what it loads is what every job of
a shipped experiment loads (`linear_fit`'s model graph, too, goes through
`torch.utils.tensorboard`), no more. Matplotlib is the sweep's shared plotter's to load;
where there is none (it could not start), it is loaded here, with its fonts and caches
warmed by a small figure drawn and thrown away, and the workers draw their own figures.
"""

import contextlib
import gc
import importlib.util
import os
import signal

import torch  # noqa: F401
import tqdm.auto  # noqa: F401
from tensorboard.compat.proto import config_pb2, graph_pb2, step_stats_pb2, versions_pb2  # noqa: F401
from torch.utils.tensorboard import _pytorch_graph  # noqa: F401

from runner.log import tensorboard as loggers

from runner.build import optim

from runner import run  # noqa: F401
from runner.workers import PLOTTER_ADDRESS

if PLOTTER_ADDRESS not in os.environ and importlib.util.find_spec("matplotlib") is not None:
    from runner.observe.plotter import warm_up

    # an error here would stop the server, and the sweep with it: a job's first figure
    # warms up instead
    with contextlib.suppress(Exception):
        warm_up()

# A worker ignores Ctrl-C except while a run trains, whose handler stops it after its step
# (`runner.train.loop.stop_on_signals`): one that came between two jobs would be the worker's
# error, and joblib would end the sweep at once. The sweep process sees it too
# (`runner.sweep.summary.Summary`) and starts no more jobs. The server itself ignores it anyway.
signal.signal(signal.SIGINT, signal.SIG_IGN)

gc.freeze()  # as `runner.cli.run_job` does: the collector stops walking what lives forever

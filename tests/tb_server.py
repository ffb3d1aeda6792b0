"""A real TensorBoard server over a log directory, read through its HTTP API.

`with tensorboard(logdir) as tb:` starts `python -m tensorboard.main` from the installed
package, loading the files once before it answers (`--reload_interval 0 --reload_task
blocking`, the legacy Python loader), and stops it at the end. `load_fast=True` uses the
Rust data server instead (what `tensorboard --logdir` picks by default where it is installed);
it loads in the background, so callers poll (`wait_for`).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
EVERY_STATUS = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


class Server:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        """GET /data/<path>?<params>, decoded from JSON."""
        return json.loads(self.raw(path, **params))

    def raw(self, path: str, **params: str) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/data/{path}{query}", timeout=30) as response:
            return response.read()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.url}/data/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def runs(self) -> list[str]:
        return self.get("runs")

    def tags(self, plugin: str) -> dict[str, list[str]]:
        """{run: [tag, ...]} of one plugin: scalars, histograms, text, images."""
        return {run: sorted(tags) for run, tags in self.get(f"plugin/{plugin}/tags").items()}

    def scalars(self, run: str, tag: str) -> list[tuple[int, float]]:
        return [
            (step, value) for _, step, value in self.get("plugin/scalars/scalars", run=run, tag=tag)
        ]

    def histograms(self, run: str, tag: str) -> list[tuple[int, list[tuple[float, float, float]]]]:
        """(step, [(left, right, count), ...]) per logged histogram."""
        rows = self.get("plugin/histograms/histograms", run=run, tag=tag)
        return [(step, [tuple(bucket) for bucket in buckets]) for _, step, buckets in rows]

    def texts(self, run: str, tag: str) -> list[tuple[int, str]]:
        """(step, the text as the dashboard renders it: HTML from Markdown)."""
        return [(t["step"], t["text"]) for t in self.get("plugin/text/text", run=run, tag=tag)]

    def images(self, run: str, tag: str) -> list[tuple[int, bytes]]:
        """(step, the encoded image as served)."""
        rows = self.get("plugin/images/images", run=run, tag=tag)
        return [(r["step"], self.raw(f"plugin/images/individualImage?{r['query']}")) for r in rows]

    def layout(self) -> dict[str, Any]:
        return self.get("plugin/custom_scalars/layout")

    def graph_info(self) -> dict[str, Any]:
        return self.get("plugin/graphs/info")

    def graph(self, run: str) -> str:
        """The run's graph as GraphDef text."""
        return self.raw("plugin/graphs/graph", run=run).decode()

    def hparams_experiment(self) -> dict[str, Any]:
        return self.post("plugin/hparams/experiment", {"experimentName": ""})

    def session_groups(self) -> list[dict[str, Any]]:
        body = {
            "experimentName": "",
            "allowedStatuses": EVERY_STATUS,  # the default lists none
            "startIndex": 0,
            "sliceSize": 1000,
        }
        return self.post("plugin/hparams/session_groups", body)["sessionGroups"]


@contextlib.contextmanager
def tensorboard(logdir: Path, load_fast: bool = False, timeout: float = 60) -> Iterator[Server]:
    """A TensorBoard server on a free port, answering once it has loaded `logdir`."""
    output = logdir.parent / f"{logdir.name}.tensorboard.log"
    # --port 0: the system picks a free port; the server prints the URL it got.
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    command += ["--host", "127.0.0.1", "--port", "0", "--load_fast", str(load_fast).lower()]
    if not load_fast:  # load the files once, before serving
        command += ["--reload_interval", "0", "--reload_task", "blocking"]
    # keep every sample (the defaults keep 1000 scalars, 500 histograms, 10 images per tag)
    command += ["--samples_per_plugin", "scalars=100000,histograms=10000,images=1000"]
    with output.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        server = Server(_wait_for_url(process, output, timeout))
        wait_for(server.runs, lambda runs: True, timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 30) -> T:
    """Call `read` until `done` holds for what it returns; after `timeout`, the last value
    (or the last connection error)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = read()
            if done(value) or time.monotonic() > deadline:
                return value
        except OSError:  # not answering yet
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def _wait_for_url(process: subprocess.Popen, output: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"(http://127\.0\.0\.1:\d+)/", output.read_text())
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"tensorboard did not start:\n{output.read_text()}")

"""Regenerate the TensorBoard screenshots under docs/: `python docs/screenshots.py`.

It runs `linear_fit`, `sine_mlp` and a 4-job `linear_fit` sweep into a temporary directory,
starts `tensorboard --logdir` (the installed package, default loader) on 127.0.0.1 and a
free port over each, waits until every run is loaded, and photographs each dashboard with
headless Chromium. What it needs and does not find, it installs first:

- Debian's Chromium (`apt-get install -y chromium`, through sudo unless run as root); or set
  CHROMIUM to a Chromium binary to use that one;
- playwright-core, which drives the same Chromium for the Graphs view: the model's box is
  opened by a double-click that no URL can ask for. npm installs it into
  ~/.cache/runner-screenshots (node and npm come from apt-get where missing).

`--no-install` installs nothing: without Chromium it stops, without playwright-core the
Graphs view is taken with the model's box closed (the script says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent  # runs start here, as a user's would (experiments/ is importable)
CACHE = Path.home() / ".cache" / "runner-screenshots"  # where npm puts playwright-core
PLAYWRIGHT = "playwright-core@1.65.2"
WINDOW = (1400, 900)
BUDGET_MS = 10_000  # Chromium's virtual time: TensorBoard fetches, lays out and draws in it
SWEEP = ("optimizer.lr=0.01,0.1", "seed=1,2")
# file name: (which logdir, the dashboard and its settings in TensorBoard's URL fragment)
VIEWS = {
    "scalars": ("linear_fit", "#scalars&tagFilter=%5Eloss%2F%7C%5Eparam%2F"),  # ^loss/|^param/
    "custom-scalars": ("linear_fit", "#custom_scalars"),
    "text": ("linear_fit", "#text"),
    "images": ("linear_fit", "#images"),
    "histograms": ("sine_mlp", "#histograms&tagFilter=param_hist"),
    "graphs": ("sine_mlp", "#graphs"),
    "hparams": ("sweep", "#hparams"),  # opens on the table view
    "sweep-scalars": ("sweep", "#scalars&tagFilter=loss%2Ftrain"),  # the run list: the grid
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # nothing but the local server is reached
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]
# Double-click the model's box in the Graphs view, then photograph it.
OPEN_GRAPH = """
const { chromium } = require('playwright-core');
const [executablePath, url, out, width, height, flags] = process.argv.slice(1);
(async () => {
  const browser = await chromium.launch({ executablePath, args: JSON.parse(flags) });
  const page = await browser.newPage({ viewport: { width: +width, height: +height } });
  await page.goto(url);
  const model = page.locator('g.node').filter({ hasText: 'MLP' }).first();
  await model.waitFor({ timeout: 30000 });
  await model.dblclick();
  await page.locator('g.node').filter({ hasText: 'Linear' }).first().waitFor({ timeout: 30000 });
  await page.waitForTimeout(1000);  // the expansion's animation
  await page.screenshot({ path: out });
  await browser.close();
})().catch((e) => { console.error(e.message); process.exit(1); });
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-install", action="store_true", help="install nothing")
    install = not parser.parse_args().no_install
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if chromium is None and install:
        apt_install("chromium")
        chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("no chromium: apt-get install -y chromium (or set CHROMIUM to its path)")
    if install:
        install_playwright()
    with tempfile.TemporaryDirectory(prefix="runner-screenshots-") as tmp:
        work = Path(tmp)
        logdirs = {
            "linear_fit": runner(work, "linear_fit", "experiment=linear_fit"),
            "sine_mlp": runner(work, "sine_mlp", "experiment=sine_mlp"),
            "sweep": runner(work, "sweep", "-m", "experiment=linear_fit", *SWEEP),
        }
        for name, logdir in logdirs.items():
            with tensorboard(logdir) as url:
                for view, (where, fragment) in VIEWS.items():
                    if where == name:
                        out = DOCS / f"tensorboard-{view}.png"
                        shoot(chromium, f"{url}/{fragment}", out, work, view == "graphs")
                        print(f"{out.relative_to(ROOT)}: {name} {fragment}")


def apt_install(*packages: str) -> None:
    """Debian packages, through sudo unless this is root."""
    if shutil.which("apt-get") is None:
        sys.exit(f"no apt-get here: install {' '.join(packages)} yourself")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"apt-get install -y {' '.join(packages)}")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *packages], check=True)


def install_playwright() -> None:
    """playwright-core into CACHE, unless it is there; a failure only costs the Graphs
    view its opened model box."""
    if (CACHE / "node_modules" / "playwright-core").is_dir():
        return
    if shutil.which("npm") is None or shutil.which("node") is None:
        apt_install("nodejs", "npm")
    print(f"npm install --prefix {CACHE} {PLAYWRIGHT}")
    done = subprocess.run(["npm", "install", "--prefix", str(CACHE), PLAYWRIGHT], check=False)
    if done.returncode != 0:
        print("  npm failed: the Graphs view is taken with the model's box closed")


def runner(work: Path, name: str, *args: str) -> Path:
    """`python -m runner ...` into work/name/: the logdir TensorBoard opens. A single run
    goes one level down, so that its run is named after it rather than `.`."""
    logdir = work / name
    sweep = "-m" in args
    where = f"hydra.sweep.dir={logdir}" if sweep else f"hydra.run.dir={logdir / name}"
    print(f"python -m runner {' '.join(args)}")
    command = [sys.executable, "-m", "runner", *args, where]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return logdir


@contextlib.contextmanager
def tensorboard(logdir: Path, timeout: float = 120) -> Iterator[str]:
    """`tensorboard --logdir` on 127.0.0.1 and a port the system picks; its URL once every
    run is loaded (each run's last scalar, `hparam/final_loss`, is there), stopped after.
    The logdir is given as its name, which the dashboards print under the runs."""
    output = logdir.parent / f"{logdir.name}.tensorboard.log"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir.name]
    command += ["--host", "127.0.0.1", "--port", "0"]
    with output.open("w") as sink:
        server = subprocess.Popen(command, cwd=logdir.parent, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        runs = {str(p.parent.relative_to(logdir)) for p in logdir.glob("**/events.out.tfevents.*")}
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tensorboard did not load {logdir}:\n{output.read_text()}")
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", output.read_text())
            if found and loaded(found.group(1), runs):
                break
            time.sleep(0.2)
        yield found.group(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def loaded(url: str, runs: set[str]) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=10) as answer:
            tags = json.load(answer)
    except OSError:  # not answering yet
        return False
    return all("hparam/final_loss" in tags.get(run, {}) for run in runs)


def shoot(chromium: str, url: str, out: Path, work: Path, open_graph: bool) -> None:
    profile = tempfile.mkdtemp(dir=work)  # a fresh profile: no state from the last view
    if open_graph and open_model(chromium, url, out):
        return
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={BUDGET_MS}"]
    subprocess.run(
        [chromium, *flags, f"--screenshot={out}", url],
        check=True,
        capture_output=True,  # Chromium's own chatter (D-Bus, GPU) is not ours to show
        timeout=120,
    )


def open_model(chromium: str, url: str, out: Path) -> bool:
    """The Graphs view with the model's box opened, through playwright-core; False where
    node or playwright-core is missing."""
    node = shutil.which("node")
    flags = json.dumps([f for f in CHROMIUM_FLAGS if not f.startswith(("--headless", "--window"))])
    if node is None:
        print("no node: the Graphs view is taken with the model's box closed")
        return False
    modules = os.pathsep.join([str(CACHE / "node_modules"), os.environ.get("NODE_PATH", "")])
    done = subprocess.run(
        [node, "-e", OPEN_GRAPH, chromium, url, str(out), *map(str, WINDOW), flags],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": modules},
    )
    if done.returncode != 0:
        print(f"playwright-core: {done.stderr.strip()[-500:]}")
        print("  the Graphs view is taken with the model's box closed")
        return False
    return True


if __name__ == "__main__":
    main()

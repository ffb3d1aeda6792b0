"""The docs hold together: every relative link resolves, and the README stays a short
quick start that shows the main job and the test command CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "benchmarks" / "README.md"]
MAIN_JOB = "python -m runner experiment=linear_fit"
TEST_COMMAND = "python -m pytest"
MAX_README_LINES = 300

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text outside code, where a `[x](y)` is a link and a `# x` a heading."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower-cased, punctuation dropped, spaces
    to hyphens (underscores and hyphens stay)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken(page: Path) -> list[str]:
    """The relative links of `page` that lead nowhere, each with the reason."""
    out = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            out.append(f"{target}: no file {shown(dest)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{target}: no heading #{anchor} in {shown(dest)}")
    return out


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


def test_the_pages_exist() -> None:
    assert README.is_file() and DOCS, "README.md and docs/*.md are what this file checks"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken(page) == []


def test_the_link_check_sees_a_broken_file_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Real heading: `with_code`\n\n## Same\n\n## Same\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#real-heading-with_code) [ok](other.md#same-1) [ok](#here)\n"
        "[web](https://example.com/missing.md) `[in code](missing.md)`\n"
        "```\n[in a fence](missing.md)\n```\n"
        "# Here\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) ![img](missing.png)\n"
    )
    found = broken(page)
    assert [f.split(":")[0] for f in found] == ["missing.md", "other.md#nowhere", "missing.png"]


def test_slugs_follow_github() -> None:
    assert slug("Your own Python code: `_target_`") == "your-own-python-code-_target_"
    assert slug("4. Stepping outside the graph: `detach()` and `no_grad()`") == (
        "4-stepping-outside-the-graph-detach-and-no_grad"
    )
    assert slug("metrics.json") == "metricsjson"
    assert slug("Ctrl-C and SIGTERM") == "ctrl-c-and-sigterm"


def test_the_readme_is_a_short_quick_start() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    assert MAIN_JOB in text
    assert "Learned: y = 1.924x + 1.050" in text
    assert re.search(rf"^{re.escape(TEST_COMMAND)}\s*$", text, re.M), "the test command, alone"


def test_the_readme_links_every_topic_page() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


def test_ci_runs_the_readmes_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    if not ci.is_file():
        pytest.skip("no .ci/run in this checkout")
    commands = [line.strip() for line in ci.read_text().splitlines()]
    assert TEST_COMMAND in commands


@pytest.mark.slow
def test_the_readmes_own_experiment_runs_as_written(tmp_path: Path) -> None:
    """The YAML the README shows, saved where its first lines say, prints the line shown
    under it (Hydra reads `# @package` only above any other comment)."""
    from conftest import cli

    text = README.read_text()
    yaml = re.search(r"```yaml\n(# @package.*?)```", text, re.S)
    assert yaml is not None, "the README shows no experiment file"
    where, command = re.search(r"^# (\S+\.yaml): (python -m runner .+)$", yaml[1], re.M).groups()
    (tmp_path / where).parent.mkdir(parents=True)
    (tmp_path / where).write_text(yaml[1])
    args = command.split()[3:]
    done = cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = re.search(r"\$ " + re.escape(command) + r"\n(Learned: .+)\n", text)
    assert shown is not None and shown[1] in done.stdout, done.stdout

"""The docs stay true: the command reference matches --help, and every relative link resolves."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from snptool.cli.reference import REGENERATE, command_names, command_reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGES += [ROOT / "examples" / "benchmarks" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
FENCED = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"`[^`\n]*`")
# Paths and names quoted in prose and code: `snptool/core/macs.py`, `snptool.deploy`.
REPO_PATH = re.compile(r"(?<![\w./])((?:snptool|model_defs|tests|examples)/[\w./-]*\w\.(?:py|sh))")
PACKAGES = "core|data|training|analysis|pruning|deploy|report|cli|config|errors"
DOTTED = re.compile(rf"`(snptool\.(?:{PACKAGES})(?:\.\w+)*)`")


def test_command_reference_is_current():
    written = (ROOT / "docs" / "commands.md").read_text()
    assert written == command_reference(), f"docs/commands.md is stale; run `{REGENERATE}`"


def test_command_reference_covers_every_command():
    reference = command_reference()
    assert "```text\nUsage: snptool [OPTIONS] COMMAND" in reference
    for name in command_names():
        assert f"## snptool {name}\n" in reference, name
        assert f"Usage: snptool {name} " in reference, name


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCED.sub("", page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def relative_links(page: Path) -> list[str]:
    links = LINK.findall(INLINE.sub("", FENCED.sub("", page.read_text())))
    return [link for link in links if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_that_exist(page):
    assert page.exists(), page
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        missing_anchor = anchor and target.suffix == ".md" and anchor not in anchors(target)
        if not target.exists() or missing_anchor:
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_repository_paths_exist(page):
    missing = sorted({p for p in REPO_PATH.findall(page.read_text()) if not (ROOT / p).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def resolves(dotted: str) -> bool:
    """Whether `snptool.a.b.name` is an importable module or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name, None)
        return target is not None
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_python_names_resolve(page):
    unknown = sorted({n for n in DOTTED.findall(page.read_text()) if not resolves(n)})
    assert not unknown, f"{page.relative_to(ROOT)} names what snptool does not have: {unknown}"

"""The user guides in ``guides/`` run as written.

Every fenced block whose info string is exactly ``python`` is executed, in order, in
one fresh namespace per guide (so later blocks use earlier variables), inside a
temporary working directory. The ``pyro-mm ...`` commands of the ``bash`` blocks of
``getting-started.md`` are run through :func:`pyro_mm.cli.main.main`.
"""

from __future__ import annotations

import re
import shlex
import traceback
from pathlib import Path

import pytest
import torch

GUIDES = Path(__file__).resolve().parent.parent / "guides"
GUIDE_FILES = sorted(GUIDES.glob("*.md"))
README = GUIDES.parent / "README.md"
EXPECTED = ("getting-started.md", "your-own-data.md", "encoders-and-guides.md",
            "composing-models.md", "auxiliary-factors.md", "diagnostics.md",
            "gpu-and-scale.md")

# A fence opens with three or more backticks, an optional info string, and closes with
# the same number of backticks (CommonMark: at least as many; guides use exactly three).
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<ticks>`{3,})(?P<info>[^`\n]*)$")


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(info string, first line number, code)`` of every fenced block in ``text``."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        ticks, info = opening["ticks"], opening["info"].strip()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^ {{0,3}}`{{{len(ticks)},}}\s*$", lines[j]):
            body.append(lines[j])
            j += 1
        blocks.append((info, i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def python_blocks(path: Path) -> list[tuple[int, str]]:
    return [(line, code) for info, line, code in fenced_blocks(path.read_text())
            if info == "python"]


def cli_commands(path: Path) -> list[str]:
    """Lines of ``bash`` blocks whose first word is ``pyro-mm``."""
    commands = []
    for info, _, code in fenced_blocks(path.read_text()):
        if info != "bash":
            continue
        for line in code.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "pyro-mm":
                commands.append(line.strip())
    return commands


@pytest.fixture
def one_thread():
    """Guides are timed on small shared CPUs: one intra-op thread, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def factor_registry():
    """Guides register example factors in ``pyro_mm.factors.FACTORS``; undo it."""
    from pyro_mm.factors import FACTORS

    saved = dict(FACTORS)
    yield
    FACTORS.clear()
    FACTORS.update(saved)


def test_there_are_guides_with_python_blocks():
    names = {p.name for p in GUIDE_FILES}
    assert set(EXPECTED) <= names
    for path in GUIDE_FILES:
        assert python_blocks(path), f"{path.name}: no ```python blocks"


@pytest.mark.parametrize("path", GUIDE_FILES, ids=[p.name for p in GUIDE_FILES])
def test_guide_python_blocks_run(path, tmp_path, monkeypatch, one_thread,
                                 factor_registry):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"guide_{path.stem.replace('-', '_')}"}
    blocks = python_blocks(path)
    for number, (line, code) in enumerate(blocks, start=1):
        label = f"{path.name} block {number} of {len(blocks)} (line {line})"
        try:
            exec(compile(code, label, "exec"), namespace)
        except Exception:
            pytest.fail(f"{label} failed:\n{code}\n{traceback.format_exc()}", pytrace=False)


def test_getting_started_cli_commands_run(tmp_path, monkeypatch, one_thread):
    from pyro_mm.cli.main import main

    monkeypatch.chdir(tmp_path)
    commands = cli_commands(GUIDES / "getting-started.md")
    assert any(c.startswith("pyro-mm train") for c in commands), commands
    assert any(c.startswith("pyro-mm evaluate") for c in commands), commands
    for number, command in enumerate(commands, start=1):
        args = shlex.split(command, comments=True)[1:]
        try:
            code = main(args)
        except SystemExit as exc:  # --help exits through argparse
            code = exc.code or 0
        assert code == 0, f"getting-started.md command {number} `{command}` returned {code}"


def _anchors(path: Path) -> set[str]:
    """GitHub-style anchors of the Markdown headings of ``path`` (outside code blocks)."""
    text = path.read_text()
    for _, _, code in fenced_blocks(text):
        text = text.replace(code, "")
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
        anchors.add(slug.replace(" ", "-"))
    return anchors


def test_readme_links_every_guide():
    linked = set(re.findall(r"\]\(guides/([^)#\s]+)", README.read_text()))
    assert set(EXPECTED) <= linked, set(EXPECTED) - linked


def test_links_between_guides_resolve():
    for path in [*GUIDE_FILES, README]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)",
                                         path.read_text()):
            if "://" in target:
                continue
            linked = path.parent / target if target else path
            assert linked.exists(), f"{path.name}: broken link {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{path.name}: no #{anchor} in {target}"

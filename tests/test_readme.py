"""The README's Python examples run as written, so they cannot rot.

Each ```python block of README.md runs on its own, in a fresh namespace, inside a temporary working
directory. An HTML comment on the line just before the fence changes that:

    <!-- readme-test: skip (needs your own files) -->    skipped, with the reason in parentheses
    <!-- readme-test: slow -->                           runs only in the slow lane (-m slow)
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|slow)\s*(?:\((.*)\))?\s*-->")

# Blocks that fail because of a bug in the library, not in the README: block id -> the bug.
XFAIL: dict[str, str] = {}


@dataclass
class Block:
    id: str        # slug of the nearest preceding heading + index of the block under it
    line: int      # 1-based line of the first source line in README.md
    source: str
    marker: str | None = None   # "skip" or "slow"
    reason: str = ""


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def fenced_blocks(text: str, lang: str) -> list[tuple[str, int, int, re.Match | None]]:
    """Every ```<lang> block as (id, index of its opening fence line, index of its closing fence line,
    the readme-test marker on the line before it); ids are the nearest heading's slug + an index."""
    lines = text.splitlines()
    blocks, heading, per_heading, fence_start = [], "top", {}, None
    for i, line in enumerate(lines):
        if fence_start is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            if fence_start is None:
                fence_start = i
                continue
            if lines[fence_start].strip() == f"```{lang}":
                per_heading[heading] = per_heading.get(heading, 0) + 1
                marker = MARKER.fullmatch(lines[fence_start - 1].strip()) if fence_start else None
                blocks.append((f"{_slug(heading)}-{per_heading[heading]}", fence_start, i, marker))
            fence_start = None
    return blocks


def python_blocks(text: str) -> list[Block]:
    """Every ```python block, with its id and the readme-test marker on the line before its fence."""
    lines = text.splitlines()
    return [Block(id=bid, line=start + 2, source="\n".join(lines[start + 1:end]),
                  marker=marker.group(1) if marker else None, reason=(marker.group(2) or "") if marker else "")
            for bid, start, end, marker in fenced_blocks(text, "python")]


BLOCKS = python_blocks(README.read_text())


def marks_for(block, timeout: int) -> list:
    """The pytest marks of a README block's ``readme-test`` marker: skip (with its reason), or slow with a
    longer ``timeout``. Any block with ``id``, ``line``, ``marker`` and ``reason`` (the shell blocks too)."""
    marks = []
    if block.marker == "skip":
        marks.append(pytest.mark.skip(reason=f"README.md:{block.line}: {block.reason or 'marked skip'}"))
    if block.marker == "slow":
        marks += [pytest.mark.slow, pytest.mark.timeout(timeout)]
    return marks


def _param(block: Block):
    # Idle, the slow blocks take 10 s to a few minutes on 2 cores; on a shared machine several times
    # that, so they get more than the default lane's 300 s.
    marks = marks_for(block, 1800)
    if block.id in XFAIL:
        marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[block.id]))
    return pytest.param(block, marks=marks, id=block.id)


def test_the_extractor_finds_the_blocks():
    text = README.read_text()
    assert len(BLOCKS) == text.count("```python\n"), [b.id for b in BLOCKS]
    assert len({b.id for b in BLOCKS}) == len(BLOCKS), "two blocks share an id"
    assert not set(XFAIL) - {b.id for b in BLOCKS}, "XFAIL names a block that no longer exists"


def test_every_marker_sits_just_before_a_python_fence():
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        if "readme-test" in line:
            assert MARKER.fullmatch(line.strip()), f"README.md:{i + 1}: malformed marker {line!r}"
            # ```bash fences: their commands run in tests/test_readme_commands.py
            assert i + 1 < len(lines) and lines[i + 1].strip() in ("```python", "```bash"), \
                f"README.md:{i + 1}: a readme-test marker must be on the line just before a ```python or ```bash fence"
            if MARKER.fullmatch(line.strip()).group(1) == "skip":
                assert MARKER.fullmatch(line.strip()).group(2), f"README.md:{i + 1}: a skip needs a reason"


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                      # whatever the example writes lands here
    # padded so that a traceback names the README's own line numbers
    code = compile("\n" * (block.line - 1) + block.source, str(README), "exec")
    try:
        exec(code, {"__name__": f"readme_{block.id.replace('-', '_')}"})
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")

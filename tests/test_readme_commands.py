"""The README's shell commands run as written, in order, so they cannot rot.

Every ```bash block of README.md is a test; its ``underhood ...`` lines run one after another in one
temporary folder shared by the whole file (so ``underhood samples --out samples`` early in the README
makes the images later commands read), in-process through ``underhood.cli.main`` to stay fast.
``torchrun ... -m underhood ...`` lines run as a process; other lines (``make``, ``. .venv/bin/activate``)
belong to the shell and the Makefile and are not run here. An HTML comment on the line just before the
fence works as in tests/test_readme.py:

    <!-- readme-test: skip (reason) -->    skipped, with the reason
    <!-- readme-test: slow -->             runs only in the slow lane (-m slow), each command as a process
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from underhood.cli import main

from .test_readme import fenced_blocks, marks_for

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass
class Block:
    id: str
    line: int                                   # 1-based line of the fence in README.md
    commands: list[tuple[int, str]] = field(default_factory=list)   # (README line, command)
    marker: str | None = None
    reason: str = ""


def shell_blocks(text: str) -> list[Block]:
    """Every ```bash block with its commands (continuation lines joined), id and marker."""
    lines = text.splitlines()
    blocks = []
    for bid, fence, end, marker in fenced_blocks(text, "bash"):
        block = Block(bid, fence + 1, marker=marker.group(1) if marker else None,
                      reason=(marker.group(2) or "") if marker else "")
        pending, start = "", None
        for j in range(fence + 1, end):
            part = lines[j].rstrip()
            start = j + 1 if start is None else start
            if part.endswith("\\"):
                pending += part[:-1] + " "
                continue
            command = (pending + part).strip()
            if command and not command.startswith("#"):
                block.commands.append((start, command))
            pending, start = "", None
        blocks.append(block)
    return blocks


BLOCKS = shell_blocks(README.read_text())


def _argv(command: str) -> list[str] | None:
    """The underhood arguments of a README command line, or None when it is not an underhood command."""
    words = shlex.split(command, comments=True)
    if words[:1] == ["underhood"]:
        return words[1:]
    if words[:3] == ["python", "-m", "underhood"]:
        return words[3:]
    if words[:1] == ["torchrun"] and "underhood" in words and words[words.index("underhood") - 1] == "-m":
        return words  # launched as written
    return None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The folder every block runs in; the README's first ``underhood samples`` command has run in it."""
    folder = tmp_path_factory.mktemp("readme")
    first = next(c for b in BLOCKS for _, c in b.commands if (_argv(c) or [None])[0] == "samples")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(_argv(first)) == 0
    finally:
        os.chdir(cwd)
    return folder


def _param(block: Block):
    return pytest.param(block, marks=marks_for(block, 3600), id=block.id)


def test_the_extractor_finds_the_commands():
    text = README.read_text()
    assert len(BLOCKS) == text.count("```bash\n")
    assert len({b.id for b in BLOCKS}) == len(BLOCKS)
    commands = [c for b in BLOCKS for _, c in b.commands]
    assert any(c.startswith("underhood samples --out samples") for c in commands)
    # every image a command reads is one `underhood samples` writes (or one a command before it wrote)
    from underhood.data.samples import samples_names

    for b in BLOCKS:
        for line, c in b.commands:
            for word in shlex.split(c, comments=True):
                if word.endswith((".png", ".jpg")):
                    assert word.startswith("samples/") and word[8:] in samples_names(), f"README.md:{line}: {word}"


def test_the_synopsis_is_not_a_shell_block():
    """The command synopsis (``underhood demo [--model SPEC] ...``) is ```text, so nobody pastes it into a shell."""
    for b in BLOCKS:
        for line, c in b.commands:
            assert "[" not in c.split("#")[0] and "..." not in c, f"README.md:{line}: {c}"


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_commands(block: Block, workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    for line, command in block.commands:
        argv = _argv(command)
        if argv is None:
            continue  # a shell or make line
        if block.marker == "slow" or argv[0] == "torchrun":
            exe = Path(sys.executable).parent
            cmd = [str(exe / "torchrun"), *argv[1:]] if argv[0] == "torchrun" else \
                [sys.executable, "-m", "underhood", *argv]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workspace, timeout=3000)
            assert proc.returncode == 0, f"README.md:{line}: {command}\n{proc.stderr[-3000:]}"
        else:
            rc = main(argv)
            err = capsys.readouterr().err
            assert rc == 0, f"README.md:{line}: {command}\n{err}"

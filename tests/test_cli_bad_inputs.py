"""Every command refuses every bad option value with one line on stderr and status 2, before any work.

The table is generated from the parser itself: every option of every command (``build_parser()``'s
subparsers and their actions) gets the bad values its type implies (zero, negative, NaN, infinite,
too large, wrong type, an unknown choice), so an option added later is covered without editing this
file; an option without a checked type must be named in :data:`FREE_TEXT` (values only the model can
judge, such as layer and class names). Each bad value runs in-process through ``underhood.cli.main``
with the command's work replaced by a sentinel: reaching it means the value was accepted and the
command would have started loading a model or data. A few real subprocess runs check the same at the
process level.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

import underhood.cli as cli
from underhood.cli import build_parser, main
from underhood.cli.common import weights_file
from underhood.cli.options import (
    Number,
    budget,
    budgets,
    channels,
    class_split,
    data_spec,
    depths,
    device,
    fractions,
    image_file,
    names,
    priors,
    training_data,
)

SECONDS = 5.0  # a refusal comes from the parser or a check, not from work; generous for a shared machine

FREE_TEXT = {
    "--model": "a model spec: checked when it is loaded",
    "--layer": "a layer name of the model",
    "--target": "a class name or index of the model",
    "--label": "a class name or index of the model",
    "--class": "class names or indices of the model",
    "--out": "checked before the work by the output check (tests/test_cli_outputs.py)",
    "model": "the model spec positional of `layers`",
    "--cache": "a folder, created when missing (influence: a file there is refused by the command's check)",
    "--compare": "a second model spec (explore): checked when it is loaded",
    "--host": "an address to listen on (explore): checked when the server binds, one line naming --host",
}
"""Options whose values only the loaded model can judge (so no parser type), and why."""

ZERO_OK = {"--seed", "--thumbnails", "--noise", "--diversity", "--tv", "--alpha", "--power", "--content-weight",
           "--style-weight", "--tv-weight", "--damping", "--retrain", "--port"}
"""Numeric options for which 0 is a meaningful value (a seed; a count of extras; a weight that switches a term off;
a port: 0 picks a free one). No option accepts a negative value."""

STRING_BAD = {
    weights_file: ["missing.pt", ""],
    budget: ["0", "-1", "nan", "inf", "abc", "1/0", "1e9"],
    budgets: ["nan", "-1", "abc", "0:1:1", "1:0:5", "0:1e9:3"],
    channels: ["a:b", "-1", ","],
    names: [",", " "],
    priors: ["tv=nan", "tv=-1", "tv", "bogus=1", "tv=inf"],
    data_spec: ["shapes:0", "shapes:-1", "shapes:abc", "shapes-spurious:2", "shapes-spurious:nan", "digits:val",
                "no/such/folder"],
    training_data: ["shapes-spurious:nan", "shapes-spurious:-1", "no/such/folder"],
    device: ["gpu", "cuda:x", ""],
    image_file: ["missing.png"],
    class_split: ["halves", "a,b", "a,b/", "/c,d", "a/b/c"],
    depths: ["0", "-1", "a", "1.5", ","],
    fractions: ["0", "1", "1.5", "-0.2", "abc", "nan"],
}
"""Bad values of the options typed by a validator of :mod:`underhood.cli.options` (not a plain number)."""

EXTRA = {"render": ["--class", "0"], "train": ["--adversarial", "fgsm"]}
"""Options a command needs beside its required ones for the base command line to be valid."""


class WorkStarted(BaseException):
    """Raised instead of the command's work: the options were all accepted."""


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = _commands()


def _name(action: argparse.Action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


def _bad_values(action: argparse.Action) -> list[str]:
    """The bad values an option's type implies."""
    if action.choices is not None and not isinstance(action.type, Number):
        return ["bogus-choice"]
    t = action.type
    if isinstance(t, Number):
        name, low = _name(action), t.low
        if t.kind is int:
            bad = ["abc", "1.5", "nan", "-1", str(int(low) - 1)]       # text, a fraction, NaN, below the range
        else:
            bad = ["abc", "nan", "inf", "-inf", "-1", f"{low - 1:g}"]
        if t.strict:
            bad.append(f"{low:g}")                                      # the open end of (low, high]
        if low <= 0 and not t.strict:
            assert name in ZERO_OK, f"{name} accepts 0 but is not in ZERO_OK"
        if t.high is not None:
            bad.append(str(t.kind(t.high * 10 + 1)))                   # too large
        return sorted(set(bad))
    for validator, values in STRING_BAD.items():
        if t is validator:
            return values
    if getattr(t, "__qualname__", "").startswith("one_of"):
        return ["bogus-name"]
    return []


def _base(command: str, parser: argparse.ArgumentParser, image: str) -> list[str]:
    """A valid command line: positionals and required options filled in."""
    argv = [command]
    for action in parser._actions:
        if action.option_strings:
            if action.required:
                argv += [action.option_strings[0], "features.9"]
            continue
        if action.type is image_file:
            argv.append(image)
        elif action.dest == "model":
            argv.append("shapes")
    return argv + EXTRA.get(command, [])


def _cases() -> list:
    cases = []
    for command, parser in COMMANDS.items():
        for action in parser._actions:
            if action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue  # flags
            for value in _bad_values(action):
                cases.append(pytest.param(command, _name(action), value, id=f"{command}{_name(action)}={value}"))
    return cases


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "star.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(path)
    return str(path)


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Replace the work of every command with :class:`WorkStarted`; run in an empty folder."""
    monkeypatch.chdir(tmp_path)

    def started(args):
        raise WorkStarted(args.command)

    monkeypatch.setattr(cli, "execute", started)


def _refused(argv: list[str], capsys) -> str:
    start = time.perf_counter()
    try:
        rc = main(argv)
    except WorkStarted:
        pytest.fail(f"accepted and started work: underhood {' '.join(argv)}")
    seconds = time.perf_counter() - start
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert rc == 2, f"status {rc} for {argv}: {out.err}"
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    assert lines[0].startswith(f"underhood {argv[0]}: error:"), lines[0]
    assert seconds < SECONDS, f"{seconds:.1f} s to refuse {argv}"
    return lines[0]


def test_every_option_is_typed_or_named_free_text():
    untyped = []
    for command, parser in COMMANDS.items():
        for action in parser._actions:
            if action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            if not _bad_values(action) and _name(action) not in FREE_TEXT:
                untyped.append(f"{command} {_name(action)}")
    assert not untyped, f"options without a checked type (give one from underhood.cli.options): {untyped}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_base_command_line_is_accepted(command, image, no_work, capsys):
    """The table's base command lines are valid (so a refusal below is the bad value's doing)."""
    with pytest.raises(WorkStarted):
        main(_base(command, COMMANDS[command], image))


@pytest.mark.parametrize("command, option, value", _cases())
def test_a_bad_value_is_refused_in_one_line(command, option, value, image, no_work, capsys):
    argv = _base(command, COMMANDS[command], image)
    if option.startswith("-"):
        argv += [f"{option}={value}"]  # '=' so that values such as -1 are not read as options
    elif image in argv:
        argv = [value if a == image else a for a in argv]
    else:  # a positional that is not an image (e.g. course's deck names)
        argv += [value]
    line = _refused(argv, capsys)
    if option.startswith("-") and option != "--device":
        assert option in line or option.lstrip("-").replace("-", "_") in line, line


@pytest.mark.parametrize("command", ["demo", "predict", "render", "robustness", "evaluate", "toy2d"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc"])
def test_zero_negative_nan_and_text_counts(command, value, image, no_work, capsys):
    """The known offenders (--top, --size, --n, --steps) and their neighbours, spelled out."""
    option = {"demo": "--n", "predict": "--top", "render": "--size", "robustness": "--n", "evaluate": "--n",
              "toy2d": "--steps"}[command]
    _refused(_base(command, COMMANDS[command], image) + [f"{option}={value}"], capsys)


@pytest.mark.parametrize("option", sorted(ZERO_OK))
def test_zero_is_accepted_where_it_means_something(option, image, no_work):
    users = [c for c, p in COMMANDS.items() if any(option in a.option_strings for a in p._actions)]
    assert users, f"ZERO_OK names {option}, which no command has"
    for command in users:
        with pytest.raises(WorkStarted):
            main(_base(command, COMMANDS[command], image) + [option, "0"])


def test_cross_option_checks_come_before_the_work(image, no_work, capsys):
    for argv in (["render", "--layer", "features.9", "--class", "0"], ["render"],
                 ["render", "--class", "0", "--channels", "0:4"],
                 ["attack", image, "--method", "cw", "--eps", "8/255"],
                 ["attack", image, "--method", "deepfool", "--target", "circle"],
                 ["train", "--adversarial-eps", "8/255"], ["toy2d", "--steps", "4", "--frames", "8"],
                 ["layers", "shapes", "--device", "cuda:7"] if _cuda() < 8 else ["layers", "shapes", "--device", "x"]):
        _refused(argv, capsys)


def test_the_output_folder_is_checked_before_the_work(image, no_work, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    assert "is a file" in _refused(["predict", image, "--out", str(tmp_path / "a-file")], capsys)
    assert "a-file" in _refused(["predict", image, "--out", str(tmp_path / "a-file" / "sub")], capsys)
    assert "not an underhood result" in _refused(["filters", "--out", str(tmp_path / "theirs")], capsys)
    assert "a-file" in _refused(["train", "--out", str(tmp_path / "a-file" / "w.safetensors")], capsys)


def test_an_unwritable_parent_is_named(image, no_work, tmp_path, monkeypatch, capsys):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    line = _refused(["predict", image, "--out", str(locked / "out")], capsys)
    assert "permission denied" in line and str(locked) in line


def _cuda() -> int:
    """CUDA devices here (0 without CUDA): ``cuda:7`` is refused before the work on any machine with fewer than 8."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ----------------------------------------------------------------------------- real processes


def _run(*argv: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "underhood", *argv], capture_output=True, text=True, timeout=120,
                          cwd=cwd)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("argv", [
    ["predict", "IMAGE", "--top", "-1"], ["render", "--class", "0", "--lr", "nan"], ["train", "--batch-size", "abc"],
    ["attack", "IMAGE", "--eps", "1e9"], ["predict", "IMAGE", "--out", "IMAGE"],
], ids=lambda a: " ".join(a))
def test_a_real_process_prints_one_line_and_exits_2(argv, image, tmp_path):
    proc, seconds = _run(*[image if a == "IMAGE" else a for a in argv], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert seconds < 60, f"{seconds:.0f} s"  # the interpreter, and for some checks torch, start first
    assert not list(tmp_path.iterdir()), "a refused command wrote something"


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` grey pixels (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_196_megapixel_png_is_one_line(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 14_000, 14_000)
    start = time.perf_counter()
    rc = main(["predict", str(bomb), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(r"pixel", err) and time.perf_counter() - start < 30
    assert not (tmp_path / "out").exists()

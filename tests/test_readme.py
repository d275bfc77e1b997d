"""The README's command table parses with the real `faceedit` parser: documented commands cannot drift from the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from faceedit.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def documented_commands() -> list[str]:
    """Every `faceedit …` in the README's command table, with `a/b/c` alternatives expanded."""
    rows = re.findall(r"^\| `(faceedit [^`]+)` \|", README.read_text(), flags=re.M)
    commands = []
    for row in rows:
        words = row.split(" ")
        if len(words) == 3 and "/" in words[2]:  # "faceedit train generator/encoder/…"
            commands += [f"{words[0]} {words[1]} {what}" for what in words[2].split("/")]
        else:
            commands.append(row)
    return commands


def test_the_table_lists_the_commands():
    commands = documented_commands()
    assert any(c.startswith("faceedit convert") for c in commands) and len(commands) >= 12


@pytest.mark.parametrize("command", documented_commands())
def test_each_documented_command_parses(command):
    args = shlex.split(command)[1:]
    build_parser().parse_args(args)  # argparse exits (SystemExit) on anything it does not accept


def test_every_path_in_the_layout_table_exists():
    section = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    paths = [p for row in re.findall(r"^\| (.+?) \|", section, flags=re.M) for p in re.findall(r"`([^`]+)`", row)]
    folder = {"services/launcher.py": "", "supervisor.py": "services/", "processes.py": "services/"}
    missing = [p for p in paths if not (README.parent / folder.get(p, "") / p).exists()]
    assert len(paths) >= 20 and not missing, missing
    listed = {p.rstrip("/") for p in paths}
    for top in ("faceedit", "services", "clients/python", "deploy", "bench", "tests"):  # every part of the picture
        assert any(p == top or p.startswith(top + "/") for p in listed), top


def zoo_make_commands() -> list[str]:
    """Every `faceedit …` that `make zoo` / `make zoo-eval` (mk/zoo.mk) runs, continuation lines joined."""
    text = (README.parent / "mk" / "zoo.mk").read_text().replace("\\\n", " ")
    return [" ".join(line.split()[1:]) for line in text.splitlines() if line.strip().startswith("$(ZOO_BIN) ")]


@pytest.mark.parametrize("args", zoo_make_commands())
def test_each_zoo_make_command_parses(args):
    build_parser().parse_args(shlex.split(args))

"""Every command recorded in README.md and docs/*.md still parses: a result can only be rerun
from its recorded command if the script or CLI still accepts every flag in it.

Commands are read from the markdown as a reader would copy them: inline code from ``python
scripts/NAME.py`` (or ``hmmlvd ...``) to the closing backtick, and lines of code blocks joined
over trailing backslashes, comments dropped. Synopses with placeholders (``[--flag]``, ``DIR``,
``...``, ``a|b``) are not commands and are left out. Each command's arguments go through the
real parser of its script or of ``hmmlvd``; parsing is stopped right after it succeeds, so
nothing runs. A renamed or removed flag makes argparse exit with status 2, and the test names
the command and the file it is recorded in.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from hmmlvd import cli

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:\.venv/bin/)?(?:python (scripts/[a-z_]+\.py)|(hmmlvd) (?=[a-z]))")
SUBCOMMANDS = {"train", "lvd", "eval", "sample", "decode", "infill", "image"}
PLACEHOLDER = re.compile(r"\[|\.\.\.|\$|\||<|\b(?:DIR|OUT|PNG|NAME|FILE|[A-Z])\b|\bN\b")


#: Script functions that run right after a script's own parse_known_args (whose leftover
#: flags the script checks itself before calling them).
AFTER_PARSING = ("report_search", "report_runs")


class Parsed(Exception):
    """Raised by the patched parser once a command's arguments parsed."""


def _inline_commands(text: str) -> list[str]:
    """Commands in inline code spans (which may wrap over lines)."""
    found = []
    for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(span.split())
        for match in COMMAND.finditer(span):
            if match.start() == 0 or span[match.start() - 1] in " &;":
                found.append(span[match.start():])
    return found


def _block_commands(text: str) -> list[str]:
    """Commands on the lines of fenced code blocks, continuation lines joined."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = " ".join(line.split(" #")[0].split())
            match = COMMAND.search(line)
            if match and (match.start() == 0 or line[match.start() - 1] in " &;="):
                found.append(line[match.start():])
    return found


def recorded_commands() -> list[tuple[str, str]]:
    """(document, command) of every concrete command in the documents."""
    commands = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for command in _block_commands(text) + _inline_commands(text):
            command = command.split(" && ")[0].split(" > ")[0].split(" 2>")[0].strip()
            words = command.split()
            if PLACEHOLDER.search(command) or not _is_command(words):
                continue
            commands.append((path.relative_to(ROOT).as_posix(), command))
    return sorted(set(commands))


def _is_command(words: list[str]) -> bool:
    """Whether ``words`` run something with flags (not a mention of a command's name, an
    error message quoted from one, or a ``--help``)."""
    if "--help" in words or not any(w.startswith("--") for w in words):
        return False
    is_cli = words[0] == "hmmlvd" or words[0].endswith("/hmmlvd")
    return not is_cli or words[1] in SUBCOMMANDS


def _script_main(name: str, monkeypatch):
    """The script's ``main``, with the functions that a script calls right after parsing
    (without a second parser to patch) made to stop there."""
    spec = importlib.util.spec_from_file_location(f"recorded_{Path(name).stem}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    for after_parsing in AFTER_PARSING:
        if hasattr(module, after_parsing):
            monkeypatch.setattr(module, after_parsing, _stop)
    return module.main


def _stop(*args, **kwargs):
    raise Parsed


def _parses(command: str, monkeypatch) -> None:
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    words = shlex.split(command)
    match = COMMAND.match(command)
    if match.group(1):
        main, argv = _script_main(match.group(1), monkeypatch), words[2:]
    else:
        main, argv = cli.main, words[1:]
    with pytest.raises(Parsed):
        main(argv)


def test_commands_are_found_in_code_spans_and_blocks():
    text = ("Run `python scripts/a.py --x 1\n--y 2` then\n\n```bash\npython scripts/b.py \\\n"
            "  --z 3   # note\nhmmlvd train --out r\nhmmlvd eval --model DIR\n```\n")
    commands = _block_commands(text) + _inline_commands(text)
    assert commands == ["python scripts/b.py --z 3", "hmmlvd train --out r",
                        "hmmlvd eval --model DIR", "python scripts/a.py --x 1 --y 2"]
    assert [c for c in commands if not PLACEHOLDER.search(c)] == commands[:2] + commands[3:]


def test_a_removed_flag_fails_the_check(monkeypatch):
    with pytest.raises(SystemExit):
        _parses("hmmlvd train --data-dir x --out y --no-such-flag 3", monkeypatch)


def test_enough_commands_are_recorded():
    commands = recorded_commands()
    scripts = {c.split()[1] for _, c in commands if c.startswith(("python", ".venv/bin/python"))}
    assert len(commands) >= 20 and len(scripts) >= 8, commands


@pytest.mark.parametrize(("document", "command"), recorded_commands())
def test_recorded_command_parses(document, command, monkeypatch):
    try:
        _parses(command, monkeypatch)
    except SystemExit as exc:
        pytest.fail(f"{document}: `{command}` no longer parses (exit {exc.code})")

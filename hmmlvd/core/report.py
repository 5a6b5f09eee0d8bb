"""Recording results: marked sections of a markdown file (``docs/results.md``) that a script
rewrites in place, with the command, machine and date that produced them."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from hmmlvd.core.atomic import atomic_write, atomic_write_text


def device_name(device: torch.device) -> str:
    """GPU name on cuda, else the CPU model (platform.processor, or /proc/cpuinfo)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor()
    if not name and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), "")
    return name or platform.machine()


def machine_line(device: torch.device) -> str:
    """The machine: CPU model and count, and the GPU when on cuda."""
    cpu = device_name(torch.device("cpu"))
    line = f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, {platform.platform()}"
    if device.type == "cuda":
        line += f", GPU {device_name(device)}"
    return line


#: The clone's folder: recorded paths are written relative to it.
CLONE = Path(__file__).resolve().parents[1]


def clone_relative(command: str) -> str:
    """``command`` with every absolute path inside the clone's parent folder written relative
    to the clone (``/work/shared/data/x`` -> ``../shared/data/x`` for a clone at ``/work/main``),
    so that a recorded command reruns from any clone. Other words are kept as they are."""
    words = []
    for word in shlex.split(command):
        flag, eq, value = word.partition("=") if word.startswith("--") else ("", "", word)
        path = Path(os.path.normpath(value))  # lexical: a link inside the clone stays there
        if path.is_absolute() and path.is_relative_to(CLONE.parent):
            value = os.path.relpath(path, CLONE)
        words.append(f"{flag}{eq}{value}")
    return shlex.join(words)


def provenance(title: str, device: torch.device) -> str:
    """A section heading plus the exact command line (paths relative to the clone), machine
    and date."""
    command = clone_relative(shlex.join(["python", *sys.argv]))
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return "\n".join([f"## {title}", "", f"Command: `{command}`  ",
                      f"Machine: {machine_line(device)}, torch {torch.__version__}  ",
                      f"Date: {date}"])


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the section of ``path`` between ``<!-- name:begin -->`` and
    ``<!-- name:end -->`` with ``body`` (append it if absent), atomically."""
    begin_marker, end_marker = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin_marker}\n{body.rstrip()}\n{end_marker}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin >= 0 and end > begin:
        text = text[:begin] + section + text[end + len(end_marker):]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section + "\n"
    atomic_write_text(path, text)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out a matplotlib figure and write it to ``path`` atomically (a reader never sees a
    half-written PNG), in the format its suffix names; returns the path."""
    path = Path(path)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix[1:] or "png"))
    return path


def read_section(path: Path, name: str) -> str:
    """The body of ``path``'s section between ``<!-- name:begin -->`` and ``<!-- name:end -->``
    ("" when the file or the section is absent)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    begin_marker, end_marker = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    begin, end = text.find(begin_marker), text.find(end_marker)
    return text[begin + len(begin_marker):end].strip("\n") if 0 <= begin < end else ""


def read_tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in ``text``, each as its rows: ``{header cell: cell}`` (the rule line
    under the header skipped; cells stripped). A line counts as a table line when it starts and
    ends with ``|``; a table ends at the first other line."""
    tables, lines = [], [*text.splitlines(), ""]
    start = None
    for i, line in enumerate(lines):
        is_row = line.strip().startswith("|") and line.strip().endswith("|")
        if is_row and start is None:
            start = i
        elif not is_row and start is not None:
            cells = [[c.strip() for c in row.strip()[1:-1].split("|")]
                     for row in lines[start:i]]
            if len(cells) >= 2 and set("".join(cells[1])) <= set("-: "):
                tables.append([dict(zip(cells[0], row, strict=False)) for row in cells[2:]])
            start = None
    return tables

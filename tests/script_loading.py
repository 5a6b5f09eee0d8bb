"""Import a file of ``scripts/`` as a module, the way its tests need it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str, monkeypatch) -> ModuleType:
    """``scripts/<name>.py`` as module ``name``, registered in ``sys.modules`` (dataclasses
    look their module up there) until the test ends, with ``scripts/`` first on ``sys.path``
    as when the script runs (it imports ``benchlib`` from there); ``sys.path`` changes are
    undone too."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(sys, "path", [str(SCRIPTS), *sys.path])  # as `python scripts/x.py`
    spec.loader.exec_module(module)
    return module

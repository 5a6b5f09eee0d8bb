"""hmmlvd.allocator.keep_freed_memory, in fresh processes (it acts once per process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = ("from hmmlvd.allocator import keep_freed_memory; "
         "print(keep_freed_memory(), keep_freed_memory())")


def run(**environment: str) -> str:
    env = {**os.environ, **environment}
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_it_sets_glibc_thresholds_once_and_can_be_turned_off():
    assert run(HMMLVD_MALLOPT="1") == "True True"
    assert run(HMMLVD_MALLOPT="0") == "False False"

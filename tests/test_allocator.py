"""hmmlvd.core.allocator.keep_freed_memory, in fresh processes (it acts once per process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = ("from hmmlvd.core.allocator import keep_freed_memory; "
         "print(keep_freed_memory(), keep_freed_memory())")


def run(**environment: str) -> str:
    env = {**os.environ, **environment}
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_it_sets_glibc_thresholds_once_and_can_be_turned_off():
    assert run(HMMLVD_MALLOPT="1") == "True True"
    assert run(HMMLVD_MALLOPT="0") == "False False"


FAULTS = """
import resource, sys, torch
from hmmlvd.core.allocator import keep_freed_memory
keep_freed_memory()
x = torch.ones(48, 2**20)  # 192 MiB in all, in blocks of 64 MiB as an EM step's layers

def step():
    a = x[:16] * 2.0
    b = torch.exp(x[16:32])
    c = (a + b).sum()
    del a, b
    d = x[32:] + 1.0
    return float(c) + float(d[0, 0])

step()  # the first step faults its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(**environment: str) -> int:
    env = {**os.environ, **environment}
    done = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True,
                          text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_later_steps_reuse_freed_memory_instead_of_faulting_in_fresh_pages():
    """Three steps that each allocate and free three 64 MiB tensors (49,152 pages of 4 KiB):
    with glibc as it is, every step faults them in again; with keep_freed_memory, the steps
    after the first reuse the memory of the ones before (all but a block or so)."""
    pages = 3 * 3 * 64 * 2**20 // 4096
    assert page_faults(HMMLVD_MALLOPT="0") > pages // 2
    assert page_faults(HMMLVD_MALLOPT="1") < pages // 4


SIDE_EFFECT = """
import numpy as np
from hmmlvd import EMConfig, HMM
from hmmlvd.core import allocator

hmm = HMM(3, 5, 4, seed=0)
hmm.fit(np.random.default_rng(0).integers(0, 5, size=(64, 4)), EMConfig(epochs=1, batch_size=16))
print(allocator._applied)
"""


def test_a_library_fit_leaves_malloc_alone_and_the_pipelines_set_it(tmp_path):
    """Process-wide malloc settings are the program's choice: ``HMM.fit`` called from Python
    does not change them; the training pipelines (what every ``hmmlvd`` command runs) do."""
    fitted = subprocess.run([sys.executable, "-c", SIDE_EFFECT], capture_output=True,
                            text=True, check=True)
    assert fitted.stdout.strip() == "None"
    corpus = tmp_path / "wt"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        (corpus / f"wiki.{split}.tokens").write_text("the cat sat on the mat\n" * 8)
    script = ("from pathlib import Path; from hmmlvd.core import allocator; "
              "from hmmlvd.em.config import EMConfig; "
              "from hmmlvd.pipelines.text import TextTraining, train_text; "
              f"train_text(TextTraining(out=Path({str(tmp_path / 'run')!r}), "
              f"data_dir=Path({str(corpus)!r}), hidden_states=2, length=4, device='cpu', "
              "em=EMConfig(epochs=1, batch_size=8, final_full_batch=0), evaluate=None)); "
              "print(allocator._applied)")
    trained = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True, env={**os.environ, "HMMLVD_MALLOPT": "1"})
    assert trained.stdout.strip().splitlines()[-1] == "True"

"""An image training run killed outright (SIGKILL, no handler runs) in the middle of EM
resumes with ``--resume`` from its last checkpoint and ends with the parameters of a run never
interrupted: for the HCLT baseline (circuit EM, checkpointed at epoch ends) and for image LVD
(killed in stage c, after stages a and b were checkpointed). Killed before EM's first
checkpoint (learning the Chow–Liu tree, LVD's k-means, LVD stage a), the same command plus
``--resume`` starts the run over and ends the same way."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic_mnist import write_mnist

from hmmlvd.cli import main
from hmmlvd.pipelines.image_models import load_image_model

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--train-size", "200", "--eval-size", "100", "--batch-size", "50",
        "--tree-images", "200", "--device", "cpu", "--quiet", "--no-eval"]
TINY_LVD = ["--num-latents", "2", "--top-units", "2", "--feature-dim", "8",
            "--stage-a-epochs", "1", "--stage-b-epochs", "1"]

#: Runs `hmmlvd` (argv[2:]) and kills this process with SIGKILL during the argv[1]-th E-step
#: of a circuit or patch circuit (counted over both), as `kill -9` or the OOM killer would.
KILL_AT_ESTEP = """
import os, signal, sys
import hmmlvd.pc.em as em
from hmmlvd.cli import main
from hmmlvd.image import PatchCircuit

at, seen = int(sys.argv[1]), [0]

def killing(real):
    def step(*args, **kwargs):
        seen[0] += 1
        if seen[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return step

em.accumulate_counts = killing(em.accumulate_counts)
PatchCircuit.accumulate_counts = killing(PatchCircuit.accumulate_counts)
sys.exit(main(sys.argv[2:]))
"""


#: Runs `hmmlvd` (argv[2:]) and kills this process with SIGKILL when argv[1]
#: ("module:attribute" or "module:Class.method") is first called.
KILL_AT_CALL = """
import importlib, os, signal, sys
from hmmlvd.cli import main

module, _, name = sys.argv[1].partition(":")
owner = importlib.import_module(module)
*path, attribute = name.split(".")
for part in path:
    owner = getattr(owner, part)

def killing(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, attribute, killing)
sys.exit(main(sys.argv[2:]))
"""


def assert_same_parameters(whole: Path, resumed: Path) -> None:
    """The models saved in both folders have the same parameters (to float rounding)."""
    a, _ = load_image_model(whole)
    b, _ = load_image_model(resumed)
    for (key, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.mark.parametrize(("model", "extra", "kill_at"), [
    ("hclt", [], 7),  # epoch 2 of 3 (4 batches an epoch): after epoch 1's checkpoint
    ("lvd", TINY_LVD, 7),  # in stage c, after its first checkpoint (stage b: 4 batches)
])
def test_sigkill_mid_em_then_resume_ends_as_an_uninterrupted_run(mnist_dir, tmp_path, model,
                                                                  extra, kill_at):
    command = ["image", "train", "--model", model, "--size", "2", *TINY, *extra,
               "--epochs", "3", "--data-dir", str(mnist_dir)]
    assert main([*command, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_ESTEP, str(kill_at), *command,
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "checkpoints" / "latest").is_file() and not (out / "config.json").exists()
    assert main([*command, "--out", str(out), "--resume"]) == 0
    assert_same_parameters(tmp_path / "whole", out)


@pytest.mark.parametrize(("model", "extra", "kill_in"), [
    ("hclt", [], "hmmlvd.pc.structures.hclt:maximum_spanning_tree"),
    ("lvd", TINY_LVD, "hmmlvd.lvd.image.features:kmeans_per_position"),
    ("lvd", TINY_LVD, "hmmlvd.image.parts_em:PartsLearner.e_step"),
], ids=["hclt-chow-liu", "lvd-kmeans", "lvd-stage-a"])
def test_sigkill_before_the_first_checkpoint_then_resume_starts_over(mnist_dir, tmp_path,
                                                                     model, extra, kill_in):
    command = ["image", "train", "--model", model, "--size", "2", *TINY, *extra,
               "--epochs", "2", "--data-dir", str(mnist_dir)]
    assert main([*command, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_CALL, kill_in, *command,
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "checkpoints" / "latest").exists()
    assert main([*command, "--out", str(out), "--resume"]) == 0
    assert_same_parameters(tmp_path / "whole", out)

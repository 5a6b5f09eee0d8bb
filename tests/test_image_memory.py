"""The memory check of image training (hmmlvd.image.memory): an image circuit too large for
the machine is refused in one line naming the flags to lower, before the featuriser, k-means,
the Chow–Liu tree or any parameter; a small run passes. The machine's memory is faked
(hmmlvd.core.memory.available_bytes), so nothing large is ever allocated."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_mnist import write_mnist

from hmmlvd.cli import main
from hmmlvd.core import memory as device_memory
from hmmlvd.image import memory as image_memory
from hmmlvd.image.baselines import StructureConfig

TINY = ["--train-size", "100", "--eval-size", "100", "--epochs", "1", "--batch-size", "50",
        "--tree-images", "100", "--device", "cpu", "--quiet", "--no-eval"]
GB = 10**9


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist"), train=5100, test=10)


@pytest.fixture
def available(monkeypatch):
    """Fake the memory this process can allocate (bytes) and turn the check on."""
    monkeypatch.delenv(device_memory.SKIP_ENV, raising=False)

    def set_to(n: int | None) -> None:
        monkeypatch.setattr(device_memory, "available_bytes", lambda device: n)
    return set_to


def never(*args, **kwargs):
    raise AssertionError("work started before the memory check")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hmmlvd image: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_oversize_lvd_is_refused_before_any_work_naming_the_flags(mnist_dir, tmp_path, capsys,
                                                                  available, monkeypatch):
    import hmmlvd.lvd.image.distill as lvd_distill

    available(8 * GB)
    monkeypatch.setattr(lvd_distill, "make_featuriser", never)
    monkeypatch.setattr(lvd_distill, "PatchCircuit", never)
    out = tmp_path / "run"
    assert main(["image", "train", "--model", "lvd", "--size", "64", "--num-latents", "64",
                 "--top-units", "4096", "--batch-size", "256", *TINY[:6], *TINY[8:],
                 "--data-dir", str(mnist_dir), "--out", str(out)]) == 2
    line = one_line_error(capsys)
    assert "image LVD K=64, C=64, top K=4096 needs about " in line, line
    assert "this cpu has 8.0 GB available. Lower --size, --num-latents, --top-units or " \
           "--batch-size, or use --device cuda" in line, line
    assert not out.exists()  # the folder it made for the run is gone again


@pytest.mark.parametrize(("model", "flags"), [("hclt", "--size or --batch-size"),
                                              ("rat", "--size, --repetitions or --batch-size")])
def test_oversize_baseline_is_refused_before_its_structure(mnist_dir, tmp_path, capsys,
                                                           available, monkeypatch, model,
                                                           flags):
    import hmmlvd.image.baselines as baselines
    import hmmlvd.pipelines.image_models as pipeline

    available(GB)
    monkeypatch.setattr(baselines, "learn_hclt", never)
    monkeypatch.setattr(pipeline, "baseline_from_config", never)
    assert main(["image", "train", "--model", model, "--size", "512", *TINY,
                 "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run")]) == 2
    line = one_line_error(capsys)
    assert f"{model.upper()} K=512 needs about " in line and f"Lower {flags}," in line, line


def test_small_run_passes_the_check(mnist_dir, tmp_path, available):
    available(GB)
    out = tmp_path / "run"
    assert main(["image", "train", "--model", "hclt", "--size", "2", *TINY,
                 "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()


def test_estimate_grows_with_the_flags_it_names_and_can_be_skipped(available, monkeypatch):
    """The estimate grows with every flag the message names (so lowering it helps); the
    bound on HCLT holds any tree's parameters; HMMLVD_SKIP_MEMORY_CHECK=1 skips the check."""
    from hmmlvd.pc.circuit import parameter_bound
    from hmmlvd.pc.structures import hclt_region_graph

    shape = (28, 28, 1)

    def lvd(**change: int) -> int:
        sizes = {"num_latents": 4, "sub_units": 4, "top_units": 4, **change}
        return image_memory.lvd_size(shape, 7, sizes["num_latents"], sizes["sub_units"],
                                     sizes["top_units"], 256).training_bytes(64)

    base = lvd()
    for name in ("num_latents", "sub_units", "top_units"):
        assert lvd(**{name: 8}) > base, name
    size = image_memory.baseline_size("hclt", shape, 4, StructureConfig())
    assert size.training_bytes(128) > size.training_bytes(64)
    star = hclt_region_graph([(0, v) for v in range(1, 784)], num_variables=784)
    chain = hclt_region_graph([(v, v + 1) for v in range(783)], num_variables=784)
    for tree in (star, chain):
        assert parameter_bound(tree, 4, 256, "hadamard", 1) <= size.parameters
    available(1)
    with pytest.raises(image_memory.InsufficientMemoryError):
        image_memory.check_training(size, 64, "cpu", "HCLT K=4", "--size")
    monkeypatch.setenv(device_memory.SKIP_ENV, "1")
    assert image_memory.check_training(size, 64, "cpu", "HCLT K=4", "--size") > 0

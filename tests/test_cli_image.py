"""``hmmlvd image train | eval | sample | inpaint`` end to end on a small synthetic MNIST (IDX
files of 28x28 images with one bright bar each), and bad input as one-line errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from script_loading import load_script
from synthetic_mnist import write_mnist

from hmmlvd.cli import main
from hmmlvd.image import PatchCircuit
from hmmlvd.pc import Circuit, poon_domingos
from hmmlvd.pipelines.image_models import IMAGE_FILE, load_image_model, save_image_model

TINY = ["--train-size", "200", "--eval-size", "100", "--epochs", "1", "--batch-size", "100",
        "--tree-images", "200", "--repetitions", "2", "--device", "cpu", "--quiet"]
TINY_LVD = ["--num-latents", "2", "--top-units", "2", "--feature-dim", "8",
            "--stage-a-epochs", "1", "--stage-b-epochs", "1"]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory) -> dict[str, Path]:
    """An HCLT and an image-LVD model trained by `hmmlvd image train`."""
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for model, extra in (("hclt", []), ("lvd", TINY_LVD)):
        folders[model] = root / model
        assert main(["image", "train", "--model", model, "--size", "2", *TINY, *extra,
                     "--data-dir", str(mnist_dir), "--out", str(folders[model])]) == 0
    return folders


def bpd_of(line: str, split: str) -> float:
    return float(re.search(rf"{split} ([0-9.]+) bpd", line).group(1))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hmmlvd image: error: ") and "\n" not in err, err
    return err


def test_train_saves_the_model_its_record_and_results(trained):
    for model, folder in trained.items():
        for name in ("config.json", "model.safetensors", IMAGE_FILE, "results.json"):
            assert (folder / name).is_file(), name
        record = json.loads((folder / IMAGE_FILE).read_text())
        assert record["image_shape"] == [28, 28, 1] and record["model"] == model
        assert record["dataset"] == "mnist" and record["size"] == 2
        assert record["command"].startswith("hmmlvd image train --model " + model)
        results = json.loads((folder / "results.json").read_text())
        assert 0 < results["valid_bpd"] < 8 and 0 < results["test_bpd"] < 8  # beats uniform
        assert results["train_images"] == 200 and results["test_images"] == 100
        loaded, _ = load_image_model(folder)
        assert loaded.num_parameters() == results["params"]
        assert isinstance(loaded, PatchCircuit if model == "lvd" else Circuit)
    assert len(json.loads((trained["hclt"] / "results.json").read_text())["history"]["em"]) == 1
    assert "stage_c" in json.loads((trained["lvd"] / "results.json").read_text())["history"]


@pytest.mark.parametrize("model", ["hclt", "lvd"])
def test_eval_gives_the_bpd_that_train_reported(trained, mnist_dir, capsys, model):
    capsys.readouterr()
    assert main(["image", "eval", "--model", str(trained[model]), "--data-dir", str(mnist_dir),
                 "--eval-size", "100", "--quiet", "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    results = json.loads((trained[model] / "results.json").read_text())
    for split in ("valid", "test"):
        assert bpd_of(line, split) == pytest.approx(results[f"{split}_bpd"], abs=1e-4)


@pytest.mark.parametrize("model", ["hclt", "lvd"])
def test_sample_and_inpaint_write_png_grids(trained, mnist_dir, tmp_path, capsys, model):
    folder = trained[model]
    assert main(["image", "sample", "--model", str(folder), "--out", str(tmp_path / "s.png"),
                 "--grid", "3", "--seed", "1", "--device", "cpu"]) == 0
    assert main(["image", "inpaint", "--model", str(folder), "--data-dir", str(mnist_dir),
                 "--out", str(tmp_path / "i.png"), "--mask", "left", "--num-images", "4",
                 "--draws", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "saved 3x3 samples" in out and "saved left inpaintings of 4 test images" in out
    for name in ("s.png", "i.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_bpd_script_saves_what_the_cli_reads(mnist_dir, tmp_path, capsys, monkeypatch):
    bpd = load_script("image_bpd", monkeypatch)
    bpd.main([*TINY, "--data-dir", str(mnist_dir), "--model", "pd", "--size", "2", "--out",
              str(tmp_path / "runs")])
    result = json.loads((tmp_path / "runs" / "results.jsonl").read_text().splitlines()[0])
    capsys.readouterr()
    assert main(["image", "eval", "--model", str(tmp_path / "runs" / "pd-2"), "--data-dir",
                 str(mnist_dir), "--eval-size", "100", "--splits", "test", "--quiet"]) == 0
    assert bpd_of(capsys.readouterr().out, "test") == pytest.approx(result["test_bpd"],
                                                                    abs=1e-4)


def test_missing_model_folder_is_one_line(tmp_path, capsys):
    assert main(["image", "eval", "--model", str(tmp_path / "none")]) == 2
    assert f"image model folder {tmp_path / 'none'} does not exist" in one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["image", "eval", "--model", str(tmp_path / "empty")]) == 2
    assert "config.json is missing" in one_line_error(capsys)


def test_missing_dataset_is_one_line(trained, tmp_path, capsys):
    assert main(["image", "inpaint", "--model", str(trained["hclt"]), "--data-dir",
                 str(tmp_path / "none"), "--out", str(tmp_path / "i.png")]) == 2
    assert re.search(r"cannot load mnist from .*--data-dir", one_line_error(capsys))
    assert not (tmp_path / "i.png").exists()


def test_train_refuses_bad_values_before_any_work(mnist_dir, tmp_path, capsys):
    for flags, message in ((["--size", "0"], "--size must be >= 1"),
                           (["--size", "2", "--step-size", "2"], "--step-size"),
                           (["--size", "2", "--epochs", "-1"], "--epochs must be >= 0"),
                           (["--size", "2", "--seed", "-3"], "--seed")):
        assert main(["image", "train", "--model", "pd", *flags, "--data-dir", str(mnist_dir),
                     "--out", str(tmp_path / "m")]) == 2
        assert message in one_line_error(capsys)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("model, flags, message", [
    ("hclt", ["--tree-bins", "300"], "--tree-bins must be in [2, 256]"),
    ("hclt", ["--tree-bins", "1"], "--tree-bins must be in [2, 256]"),
    ("lvd", ["--context", "29"], "--context must be in [0, 28]"),
    ("lvd", ["--context", "-1"], "--context must be in [0, 28]")])
def test_train_refuses_tree_bins_and_context_out_of_range_before_any_work(
        mnist_dir, tmp_path, capsys, model, flags, message):
    """More bins than the 256 grey levels, or more context than the 28x28 image has, are
    named in one line before the output folder is made or any image is read."""
    assert main(["image", "train", "--model", model, "--size", "2", *flags, "--data-dir",
                 str(tmp_path / "no-data"), "--out", str(tmp_path / "m")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "m").exists()


def test_out_that_is_a_file_is_one_line(mnist_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["image", "train", "--model", "pd", "--size", "2", *TINY, "--data-dir",
                 str(mnist_dir), "--out", str(tmp_path / "file")]) == 2
    one_line_error(capsys)


def test_sample_eval_and_inpaint_refuse_bad_counts(trained, tmp_path, capsys):
    model = ["--model", str(trained["hclt"])]
    for argv, message in ((["sample", *model, "--out", "s.png", "--grid", "0"], "--grid"),
                          (["eval", *model, "--eval-size", "-5"], "--eval-size must be >= 0"),
                          (["inpaint", *model, "--out", "i.png", "--draws", "0"], "--draws")):
        assert main(["image", *argv]) == 2
        assert message in one_line_error(capsys)


def test_model_of_other_images_is_refused(mnist_dir, tmp_path, capsys):
    circuit = Circuit(poon_domingos(2, 3, delta=1), 2, num_categories=256, seed=0)
    save_image_model(circuit, tmp_path / "small", {"image_shape": [2, 3, 1]})
    assert main(["image", "eval", "--model", str(tmp_path / "small"), "--data-dir",
                 str(mnist_dir), "--quiet"]) == 2
    assert "is for 2x3x1 images, the dataset's are 28x28x1" in one_line_error(capsys)
    bare = tmp_path / "bare"  # no image.json and a size no dataset has
    circuit.save_pretrained(bare)
    assert main(["image", "sample", "--model", str(bare), "--out", str(tmp_path / "s.png")]) == 2
    assert "cannot tell the image shape" in one_line_error(capsys)


def test_damaged_image_record_is_one_line(trained, tmp_path, capsys):
    folder = tmp_path / "copy"
    model, record = load_image_model(trained["hclt"])
    save_image_model(model, folder, record)
    (folder / IMAGE_FILE).write_text("{not json")
    assert main(["image", "sample", "--model", str(folder), "--out", str(tmp_path / "s.png")]) == 2
    assert "image.json is damaged" in one_line_error(capsys)


def test_model_saved_without_a_record_gets_the_dataset_shape(trained, tmp_path):
    model, _ = load_image_model(trained["hclt"])
    model.save_pretrained(tmp_path / "plain")
    loaded, record = load_image_model(tmp_path / "plain")
    assert record["image_shape"] == (28, 28, 1)
    x = torch.zeros(2, 784, dtype=torch.long)
    assert torch.equal(loaded.log_likelihood(x), model.log_likelihood(x))


def test_lvd_flags_belong_to_the_lvd_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["image", "train", "--model", "pd", "--size", "2", "--num-latents", "3",
              "--out", "x"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --num-latents 3" in capsys.readouterr().err


def test_top_level_help_lists_image(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "image" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["image", "train", "--model", "lvd", "--help"])
    assert "--num-latents" in capsys.readouterr().out


@pytest.mark.parametrize("model, extra", [("pd", []), ("lvd", TINY_LVD)])
def test_patience_trains_on_train_scores_valid_and_keeps_the_best_epoch(mnist_dir, tmp_path,
                                                                         model, extra):
    out = tmp_path / model
    flags = [f for f in TINY if f not in ("--epochs", "1")]
    assert main(["image", "train", "--model", model, "--size", "2", *flags, *extra,
                 "--epochs", "3", "--patience", "1", "--data-dir", str(mnist_dir),
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    history = results["history"]
    scores = history["valid"]
    trained_epochs = history["stage_c" if model == "lvd" else "em"]
    assert 1 <= len(scores) == len(trained_epochs) <= 3
    best = max(scores)
    # patience 1: it stops the epoch after the first one that is not better
    assert len(scores) == 3 or scores[-1] <= scores[-2]
    # the model kept is the best epoch's: its valid bpd is that of the best mean log-likelihood
    assert results["valid_bpd"] == pytest.approx(-best / (784 * math.log(2)), rel=1e-5)


def test_init_continues_a_saved_model_with_full_batch_epochs(trained, mnist_dir, tmp_path,
                                                             capsys):
    out = tmp_path / "more"
    assert main(["image", "train", "--model", "hclt", "--size", "2", *TINY, "--epochs", "0",
                 "--final-full-batch", "2", "--init", str(trained["hclt"]),
                 "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    before = json.loads((trained["hclt"] / "results.json").read_text())
    after = json.loads((out / "results.json").read_text())
    assert len(after["history"]["em"]) == 2  # the two full-batch epochs, nothing else
    assert after["init"] == str(trained["hclt"]) and "continued from" in after["structure"]
    assert after["params"] == before["params"]
    # full-batch EM from the saved model fits the training images better than it did
    assert after["history"]["em"][1] > before["history"]["em"][-1]
    capsys.readouterr()
    for flags, message in ((["--size", "3"], "holds size 2, not 3"),
                           (["--size", "2", "--final-full-batch", "-1"], "must be >= 0")):
        assert main(["image", "train", "--model", "hclt", *TINY, *flags, "--init",
                     str(trained["hclt"]), "--data-dir", str(mnist_dir),
                     "--out", str(tmp_path / "x")]) == 2
        assert message in one_line_error(capsys)


def test_record_and_init_refuse_what_they_cannot_use(trained, mnist_dir, tmp_path, capsys):
    """eval --record refuses a results.json that is not a JSON object; --init refuses to
    continue an image-LVD model (LVD builds its own starting point). One line each."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained["hclt"], copy)
    (copy / "results.json").write_text("[1, 2]")
    assert main(["image", "eval", "--model", str(copy), "--data-dir", str(mnist_dir),
                 "--eval-size", "50", "--record", "--quiet"]) == 2
    assert "is damaged (not a JSON object)" in one_line_error(capsys)
    assert (copy / "results.json").read_text() == "[1, 2]"
    assert main(["image", "train", "--model", "lvd", "--size", "2", *TINY, *TINY_LVD,
                 "--init", str(trained["lvd"]), "--data-dir", str(mnist_dir),
                 "--out", str(tmp_path / "lvd-more")]) == 2
    assert "image LVD builds its own starting point" in one_line_error(capsys)


@pytest.mark.parametrize("model, extra", [("hclt", []), ("lvd", TINY_LVD)])
def test_sigterm_checkpoints_and_resume_ends_as_an_uninterrupted_run(mnist_dir, tmp_path,
                                                                     capsys, monkeypatch,
                                                                     model, extra):
    """SIGTERM in the middle of EM (LVD: of stage c): exit 143 with a checkpoint and one line
    naming --resume; the same command without --resume, or with other settings, is refused in
    one line; with --resume it ends with the model of a run never stopped."""
    import os
    import signal

    import hmmlvd.pc.em as em_module

    flags = [f for f in TINY if f not in ("--epochs", "1")]
    command = ["image", "train", "--model", model, "--size", "2", *flags, *extra,
               "--epochs", "2", "--patience", "1", "--final-full-batch", "1", "--no-eval",
               "--data-dir", str(mnist_dir)]
    assert main([*command, "--out", str(tmp_path / "whole")]) == 0
    owner, name = ((PatchCircuit, "accumulate_counts") if model == "lvd"
                   else (em_module, "accumulate_counts"))
    real = getattr(owner, name)
    calls = {"n": 0}

    def terminate_on_third(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # the second batch of stage c's first epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    out = tmp_path / "stopped"
    monkeypatch.setattr(owner, name, terminate_on_third)
    capsys.readouterr()
    assert main([*command, "--out", str(out)]) == 143
    err = capsys.readouterr().err.strip()
    assert "by SIGTERM" in err and "--resume" in err and "Traceback" not in err, err
    assert "SIGTERM: stopping after the current step, usually within seconds" in err  # when it came
    assert (out / "checkpoints" / "latest").is_file() and not (out / "config.json").exists()
    monkeypatch.setattr(owner, name, real)
    assert main([*command, "--out", str(out)]) == 2
    assert "continue it with --resume" in one_line_error(capsys)
    assert main([*command, "--pseudocount", "0.5", "--out", str(out), "--resume"]) == 2
    assert "--resume with --pseudocount 0.5" in one_line_error(capsys)
    assert main([*command, "--out", str(out), "--resume"]) == 0
    assert not (out / "checkpoints").exists()
    whole, _ = load_image_model(tmp_path / "whole")
    resumed, _ = load_image_model(out)
    for (key, p), (_, q) in zip(whole.named_parameters(), resumed.named_parameters(),
                                strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=key)
    results = json.loads((out / "results.json").read_text())
    reference = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert results["resumed"] is True
    assert results["history"]["valid"] == reference["history"]["valid"]
    if model == "lvd":  # stages a and b were not run again: their record came back
        assert results["history"]["stage_a"] == reference["history"]["stage_a"]


def test_leaf_prior_flag_reaches_every_lvd_stage(mnist_dir, tmp_path, monkeypatch):
    """--leaf-prior marginal: stage (a) and stage (c) M-steps of the sub-circuits spread the
    pseudocount by the pixel histograms (seen at the layer), the top stays uniform."""
    from hmmlvd.pc.layers.categorical import CategoricalInput

    seen = []
    real = CategoricalInput.maximize_

    def spy(self, step_size, pseudocount):
        seen.append((self.num_categories, self.prior is not None))
        return real(self, step_size, pseudocount)

    monkeypatch.setattr(CategoricalInput, "maximize_", spy)
    out = tmp_path / "lvd"
    assert main(["image", "train", "--model", "lvd", "--size", "2", *TINY, *TINY_LVD,
                 "--leaf-prior", "marginal", "--no-eval", "--data-dir", str(mnist_dir),
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "leaf_prior='marginal'" in results["structure"]
    # every M-step of the 256-level pixel inputs used the prior (stages a and c), the top's
    # inputs over the 2 latent values (stages b and c) did not
    assert {levels for levels, _ in seen} == {256, 2}
    assert all(used == (levels == 256) for levels, used in seen)


def test_final_step_size_anneals_every_lvd_stage(mnist_dir, tmp_path, monkeypatch, capsys):
    """--final-step-size: the mini-batch epochs of stages (a), (b) and (c) each anneal from
    --step-size to it (the plans the one EM loop gets; the loop's steps are tested in
    test_em_core); full-batch epochs stay at 1; out of (0, 1] it is a one-line error."""
    import hmmlvd.image.parts_em as parts_em
    import hmmlvd.pc.em as pc_em
    from hmmlvd.em import Anneal

    plans = []

    def spy(real):
        def run(learner, plan, *args, **kwargs):
            plans.append(list(plan))
            return real(learner, plan, *args, **kwargs)
        return run

    monkeypatch.setattr(parts_em, "run_epochs", spy(parts_em.run_epochs))
    monkeypatch.setattr(pc_em, "run_epochs", spy(pc_em.run_epochs))
    tiny = [*TINY_LVD[:-4], "--stage-a-epochs", "2", "--stage-b-epochs", "3"]
    assert main(["image", "train", "--model", "lvd", "--size", "2", *TINY, *tiny,
                 "--step-size", "0.5", "--final-step-size", "0.1", "--final-full-batch", "1",
                 "--no-eval", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "a")]) == 0
    mini = [[a for a, full in plan if not full] for plan in plans]
    assert [len(m) for m in mini] == [2, 3, 1, 0]  # stages a, b, c, then c's full batch
    for steps in mini[:3]:
        assert all(isinstance(a, Anneal) and (a.first, a.last) == (0.5, 0.1) for a in steps)
        assert [a.epoch for a in steps] == list(range(len(steps)))
    assert plans[3] == [(1.0, True)]
    assert main(["image", "train", "--model", "hclt", "--size", "2", *TINY,
                 "--final-step-size", "0", "--data-dir", str(mnist_dir),
                 "--out", str(tmp_path / "b")]) == 2
    assert "--final-step-size must lie in (0, 1]" in one_line_error(capsys)


@pytest.mark.parametrize("failing", ["tensors", "state"])
def test_disk_full_while_checkpointing_is_one_line_and_the_last_checkpoint_resumes(
        mnist_dir, tmp_path, capsys, monkeypatch, failing):
    """The disk fills up while the second checkpoint is written: its tensors (safetensors
    raises its own error, not an OSError) or its checkpoint.json (an OSError). One line naming
    the folder and what to do, no incomplete checkpoint folder, `latest` still names the
    first, and --resume from it finishes the run."""
    import errno

    from safetensors import SafetensorError

    import hmmlvd.core.persist as persist_module
    import hmmlvd.em.checkpoints as resume_module

    owner, name = ((persist_module, "save_file") if failing == "tensors"
                   else (resume_module, "atomic_write_json"))
    real, calls = getattr(owner, name), []

    def fill_up(what, path):
        calls.append(path)
        if len(calls) == 2 and failing == "tensors":
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(what, path)

    out = tmp_path / "run"
    command = ["image", "train", "--model", "hclt", "--size", "2", *TINY, "--no-eval",
               "--data-dir", str(mnist_dir), "--out", str(out)]
    monkeypatch.setattr(owner, name, fill_up)
    assert main(command) == 2
    line = one_line_error(capsys)
    root = out / "checkpoints"
    assert f"cannot save into {root / 'ckpt-00000002'}: No space left on device" in line, line
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-00000001", "latest"]
    assert (root / "latest").read_text().strip() == "ckpt-00000001"
    monkeypatch.setattr(owner, name, real)
    assert main([*command, "--resume"]) == 0
    assert (out / "model.safetensors").is_file() and not root.exists()


def test_resume_on_other_images_is_refused_naming_the_data(mnist_dir, tmp_path, capsys,
                                                           monkeypatch):
    """A run stopped by SIGTERM and resumed with --data-dir at other images (same count) is
    refused in one line naming the training data; with its own images it resumes."""
    import os
    import signal

    import hmmlvd.pc.em as em_module

    real, calls = em_module.accumulate_counts, []

    def terminate_on_second(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    out = tmp_path / "run"
    command = ["image", "train", "--model", "hclt", "--size", "2", *TINY, "--no-eval",
               "--out", str(out)]
    monkeypatch.setattr(em_module, "accumulate_counts", terminate_on_second)
    assert main([*command, "--data-dir", str(mnist_dir)]) == 143
    monkeypatch.setattr(em_module, "accumulate_counts", real)
    other = write_mnist(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main([*command, "--data-dir", str(other), "--resume"]) == 2
    line = one_line_error(capsys)
    assert "the training data differs" in line and "200 train images sha256:" in line, line
    assert "resume with the data folder the run was started with" in line, line
    assert (out / "checkpoints" / "latest").is_file() and not (out / "config.json").exists()
    assert main([*command, "--data-dir", str(mnist_dir), "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["trained_on"]["train_images"] == 200


def test_new_run_in_the_out_of_a_trained_model_is_refused(trained, mnist_dir, capsys):
    """A finished image model in --out is not replaced by a new image train: one line saying
    so and how to go on; the model's files are unchanged."""
    from hmmlvd.core.lock import LOCK_FILE

    out = trained["hclt"]

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in out.iterdir()
                if p.is_file() and p.name != LOCK_FILE}

    before = files()
    command = ["image", "train", "--model", "hclt", "--size", "2", *TINY, "--data-dir",
               str(mnist_dir), "--out", str(out)]
    assert main(command) == 2
    line = one_line_error(capsys)
    assert f"--out {out} holds a trained image model: choose another --out, or remove" in line
    assert main([*command, "--resume"]) == 2
    line = one_line_error(capsys)
    assert "trained image model (its run finished: nothing to resume): choose another" in line
    assert files() == before

"""scripts/image_bpd.py and scripts/image_sweep.py on a small synthetic MNIST (IDX files of
28x28 images with one bright bar each): tiny runs of every model train, beat the uniform 8
bpd, record their JSON line and circuit, draw pictures; the sweep writes its section and
PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loading import load_script
from synthetic_mnist import write_mnist

from hmmlvd.image import load_patch_circuit
from hmmlvd.pc import load_circuit

TINY = ["--train-size", "200", "--eval-size", "100", "--epochs", "1", "--batch-size", "100",
        "--tree-images", "200", "--repetitions", "2", "--quiet", "--device", "cpu"]
FIELDS = {"model", "size", "params", "train_seconds", "valid_bpd", "test_bpd", "command",
          "settings"}


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    """5,300 train (5,000 become valid) and 200 test images: black, with one horizontal or
    vertical bar of bright pixels at a random place."""
    return write_mnist(tmp_path_factory.mktemp("mnist"))


def test_baselines_train_evaluate_and_record(mnist_dir, tmp_path, capsys, monkeypatch):
    bpd = load_script("image_bpd", monkeypatch)
    pictures = ["--samples", str(tmp_path / "samples.png"), "--inpaint",
                str(tmp_path / "inpaint.png")]
    for model in ("hclt", "pd", "rat"):
        bpd.main([*TINY, "--data-dir", str(mnist_dir), "--model", model, "--size", "2",
                  "--out", str(tmp_path / "runs"), *(pictures if model == "pd" else [])])
    printed = capsys.readouterr().out
    lines = (tmp_path / "runs" / "results.jsonl").read_text().splitlines()
    results = [json.loads(line) for line in lines]
    assert [r["model"] for r in results] == ["hclt", "pd", "rat"]
    for r in results:
        assert set(r) >= FIELDS and r["size"] == 2 and r["train_images"] == 200
        assert 0 < r["valid_bpd"] < 8 and 0 < r["test_bpd"] < 8  # beats uniform (8 bits)
        assert r["command"].startswith("python scripts/image_bpd.py ")
        assert r["settings"]["epochs"] == 1 and r["train_seconds"] > 0
        saved = load_circuit(tmp_path / "runs" / f"{r['model']}-2")
        assert saved.num_parameters() == r["params"]
        assert f"{r['model']} K=2: {r['params']:,} parameters" in printed
    assert "depth=6 x 2 repetitions" in results[2]["structure"]
    for name in ("samples.png", "inpaint.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_lvd_flags_map_to_the_config(monkeypatch):
    bpd = load_script("image_bpd", monkeypatch)
    args = bpd.parse_args(["--model", "lvd", "--size", "3", "--epochs", "2", "--num-latents",
                           "5", "--batch-size", "64", "--tree-bins", "4", "--patch", "4"])
    config, stages = bpd.lvd_config(args)
    em = bpd.em_config(args)
    assert (config.sub_units, em.epochs, config.num_latents, em.batch_size,
            config.tree_bins, config.patch) == (3, 2, 5, 64, 4, 4)
    assert (stages.stage_a_epochs, stages.stage_b_epochs) == (5, 20)  # their defaults
    with pytest.raises(SystemExit):  # LVD flags belong to --model lvd only
        bpd.parse_args(["--model", "pd", "--size", "3", "--num-latents", "5"])


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch):
    bpd = load_script("image_bpd", monkeypatch)
    with pytest.raises(SystemExit, match=r"cannot load cifar10 .*--data-dir"):
        bpd.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), "--model",
                  "pd", "--size", "2"])


def test_sweep_writes_table_plot_and_pictures(mnist_dir, tmp_path, capsys, monkeypatch):
    sweep = load_script("image_sweep", monkeypatch)
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()
    results.write_text("# Results\n\nkept\n")
    pngs = {name: tmp_path / "docs" / f"{name}.png" for name in ("plot", "samples", "inpaint")}
    sweep.main(["--tiny", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "runs"),
                "--quiet", "--device", "cpu", "--write", str(results),
                *(f for name, path in pngs.items() for f in (f"--{name}", str(path)))])
    printed = capsys.readouterr().out
    for name in ("HCLT", "PD", "RAT-SPN", "LVD (patch latents), C=2"):  # --tiny: 2 latents
        assert f"| {name} | 2 |" in printed
    text = results.read_text()
    assert text.startswith("# Results\n\nkept\n")
    assert "<!-- image_bpd:begin -->" in text and "<!-- image_bpd:end -->" in text
    assert "Command: `python" in text and "![samples](samples.png)" in text
    assert "RAT-SPN 1.67" in text and "**" in text  # published reference, best valid in bold
    for path in pngs.values():
        assert path.stat().st_size > 0
    lines = (tmp_path / "runs" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4
    lvd = next(json.loads(line) for line in lines if json.loads(line)["model"] == "lvd")
    assert load_patch_circuit(tmp_path / "runs" / "lvd-2").num_parameters() == lvd["params"]


def test_sweep_dry_run_prints_the_commands(capsys, monkeypatch):
    sweep = load_script("image_sweep", monkeypatch)
    sweep.main(["--dry-run", "--epochs", "3", "--lvd-flags", "--num-latents 32"])
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == len(sweep.DEFAULT_CONFIGS)
    assert all("--epochs 3" in c for c in commands)
    assert ["--num-latents 32" in c for c in commands] == [
        c.startswith("lvd:") for c in sweep.DEFAULT_CONFIGS]


def test_sweep_reuses_finished_runs_and_keeps_variants_apart(mnist_dir, tmp_path, capsys,
                                                             monkeypatch):
    sweep = load_script("image_sweep", monkeypatch)
    flags = ["--tiny", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "runs"),
             "--quiet", "--device", "cpu", "--configs", "pd:2", "lvd-tied:2",
             *(f for name in ("plot", "samples", "inpaint")
               for f in (f"--{name}", str(tmp_path / f"{name}.png")))]
    sweep.main(flags)
    first = capsys.readouterr().out
    assert "| LVD, tied inputs, C=2 | 2 |" in first and "| PD | 2 |" in first
    assert (tmp_path / "runs" / "lvd-tied-2" / "config.json").is_file()

    def no_training(*_args, **_kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep.image_bpd, "run", no_training)
    sweep.main([*flags, "--reuse"])
    again = capsys.readouterr().out
    assert again.startswith("mnist: 200 training images") and first.endswith(again)


def test_sweep_reports_finished_cli_runs(mnist_dir, tmp_path, capsys, monkeypatch):
    """--from-runs tabulates `hmmlvd image train` folders: one evaluated by train, one trained
    with --no-eval and evaluated by `image eval --record`, one continued from it by --init
    (its train time includes the run it continued)."""
    from hmmlvd.cli import main

    runs = {name: tmp_path / name for name in ("hclt", "pd", "pd-more")}
    data = ["--data-dir", str(mnist_dir), *TINY, "--size", "2"]
    assert main(["image", "train", "--model", "hclt", *data, "--out", str(runs["hclt"])]) == 0
    assert main(["image", "train", "--model", "pd", *data, "--no-eval",
                 "--out", str(runs["pd"])]) == 0
    sweep = load_script("image_sweep", monkeypatch)
    pngs = [f for name in ("plot", "samples", "inpaint")
            for f in (f"--{name}", str(tmp_path / f"{name}.png"))]
    with pytest.raises(SystemExit, match=r"image eval --model .*--record"):
        sweep.main(["--from-runs", str(runs["pd"]), "--data-dir", str(mnist_dir), *pngs])
    assert main(["image", "eval", "--model", str(runs["pd"]), "--data-dir", str(mnist_dir),
                 "--eval-size", "100", "--record", "--quiet"]) == 0
    assert main(["image", "train", "--model", "pd", *data, "--epochs", "0",
                 "--final-full-batch", "1", "--init", str(runs["pd"]),
                 "--out", str(runs["pd-more"])]) == 0
    capsys.readouterr()
    results = tmp_path / "results.md"
    results.write_text("# Results\n")
    sweep.main(["--from-runs", *map(str, runs.values()), "--data-dir", str(mnist_dir), *pngs,
                "--write", str(results), "--section", "full"])
    printed = capsys.readouterr().out
    recorded = {name: json.loads((folder / "results.json").read_text())
                for name, folder in runs.items()}
    assert "eval_command" in recorded["pd"] and "valid_bpd" in recorded["pd"]
    rows = [line for line in printed.splitlines() if line.startswith("| HCLT") or
            line.startswith("| PD")]
    assert len(rows) == 3
    total = recorded["pd"]["train_seconds"] + recorded["pd-more"]["train_seconds"]
    assert f"| {total:.1f} |" in rows[2]
    for name, result in recorded.items():
        assert f"{result['test_bpd']:.4f} |" in rows[list(runs).index(name)]
    text = results.read_text()
    assert "<!-- full:begin -->" in text and recorded["pd"]["eval_command"] in text
    # the continued run is listed with the run it continued
    assert f"`{recorded['pd']['command']}` then `{recorded['pd-more']['command']}`" in text
    for name in ("plot", "samples", "inpaint"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_search_report_shows_changed_flags_and_valid_only(mnist_dir, tmp_path, capsys,
                                                          monkeypatch):
    """--from-runs --valid-only: runs scored on valid alone (no test bpd) in a table of the
    flags that differ from the first run's, epochs run (best by valid), valid bpd."""
    from hmmlvd.cli import main

    runs = [tmp_path / name for name in ("a", "b")]
    common = ["--model", "hclt", "--size", "2", "--data-dir", str(mnist_dir), *TINY, "--no-eval",
              "--patience", "1", "--epochs", "2"]
    for folder, extra in zip(runs, (["--pseudocount", "0.01"], ["--pseudocount", "0.5",
                                                               "--final-full-batch", "1"]),
                             strict=True):
        assert main(["image", "train", *common, *extra, "--out", str(folder)]) == 0
        assert main(["image", "eval", "--model", str(folder), "--splits", "valid",
                     "--data-dir", str(mnist_dir), "--eval-size", "100", "--record",
                     "--quiet"]) == 0
    sweep = load_script("image_sweep", monkeypatch)
    with pytest.raises(SystemExit, match="has no test_bpd"):
        sweep.main(["--from-runs", *map(str, runs), "--data-dir", str(mnist_dir),
                    "--plot", str(tmp_path / "p.png"), "--samples", str(tmp_path / "s.png"),
                    "--inpaint", str(tmp_path / "i.png")])
    capsys.readouterr()
    results = tmp_path / "results.md"
    results.write_text("# Results\n")
    sweep.main(["--from-runs", *map(str, runs), "--valid-only", "--write", str(results),
                "--section", "search"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| a")
            or line.startswith("| b")]
    recorded = [json.loads((folder / "results.json").read_text()) for folder in runs]
    assert "--pseudocount 0.01" in rows[0] and "--epochs 2" in rows[0]
    assert "`--pseudocount 0.5 --final-full-batch 1`" in rows[1]  # only what changed
    for row, result in zip(rows, recorded, strict=True):
        assert f"{result['valid_bpd']:.4f}" in row and "test_bpd" not in result
        curve = result["history"]["valid"]
        best = max(range(len(curve)), key=curve.__getitem__) + 1
        assert f"| {len(result['history']['em'])} ({best}) |" in row
    assert "<!-- search:begin -->" in results.read_text()
    assert not (tmp_path / "p.png").exists()


def test_reuse_takes_lines_written_before_a_flag_existed_at_its_default(monkeypatch):
    """A results.jsonl line written before --leaf-prior / --pseudocount-per /
    --final-step-size existed is the same run as one with those flags at their defaults, and
    not the same as one without."""
    sweep = load_script("image_sweep", monkeypatch)
    bpd = load_script("image_bpd", monkeypatch)
    for model in ("hclt", "lvd"):
        run = bpd.parse_args(["--model", model, "--size", "2", "--device", "cpu"])
        old = {k: v for k, v in bpd.jsonable(run).items()
               if k not in ("leaf_prior", "pseudocount_per", "final_step_size")}
        assert sweep.same_settings(old, run)
        other = bpd.parse_args(["--model", model, "--size", "2", "--device", "cpu",
                                "--pseudocount-per", "data"])
        assert not sweep.same_settings(old, other)
        annealed = bpd.parse_args(["--model", model, "--size", "2", "--device", "cpu",
                                   "--final-step-size", "0.01"])
        assert not sweep.same_settings(old, annealed)
        assert not sweep.same_settings({**old, "pseudocount": 0.5}, run)


def test_a_cli_lvd_run_is_named_with_its_latent_values(tmp_path, monkeypatch):
    """--from-runs reads C and tied inputs of an LVD run from its results.json's structure."""
    sweep = load_script("image_sweep", monkeypatch)
    folder = tmp_path / "lvd"
    folder.mkdir()
    result = {"model": "lvd", "size": 8, "params": 10, "valid_bpd": 1.3, "test_bpd": 1.2,
              "train_seconds": 5.0, "command": "hmmlvd image train --model lvd",
              "structure": "PatchLVDConfig(patch=7, num_latents=32, sub_units=8, "
                           "tie_inputs=True, patience=2)"}
    (folder / "results.json").write_text(json.dumps(result))
    read = sweep.run_folder_result(folder)
    assert sweep.model_name(read) == "LVD, tied inputs, C=32"
    (folder / "results.json").write_text(json.dumps({
        **result, "structure": result["structure"].replace("tie_inputs=True", "tie_inputs="
                                                          "False").replace("=32", "=4")}))
    assert sweep.model_name(sweep.run_folder_result(folder)) == "LVD (patch latents), C=4"
    hclt = {**result, "model": "hclt", "structure": "hclt K=8"}
    (folder / "results.json").write_text(json.dumps(hclt))
    assert sweep.model_name(sweep.run_folder_result(folder)) == "HCLT"


def test_run_flags_leave_out_where_and_how_a_run_went(monkeypatch):
    """A search table's flags are what was trained: not the folder, threads or a --resume."""
    sweep = load_script("image_sweep", monkeypatch)
    flags = sweep.run_flags("hmmlvd image train --model lvd --size 32 --tie-inputs --resume "
                            "--threads 1 --quiet --out runs/x --data-dir d --no-eval")
    assert flags == {"--model": "lvd", "--size": "32", "--tie-inputs": ""}

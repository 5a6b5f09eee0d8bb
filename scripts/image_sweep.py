"""Bits per dimension against model size: a sweep of ``scripts/image_bpd.py`` runs.

Each config ``MODEL:K`` is one ``image_bpd`` run, in this process (the dataset is loaded once);
flags this script does not know are passed to every run (e.g. ``--epochs 3 --device cuda
--out runs/sweep``), ``--lvd-flags "..."`` to the lvd runs only. Every run appends its JSON
line to ``<out>/results.jsonl`` and saves its baseline circuit, as ``image_bpd`` does. Then:

- the table (model, K, parameters, train seconds, valid and test bpd) is printed and, with
  ``--write``, replaces the section between ``<!-- image_bpd:begin -->`` and
  ``<!-- image_bpd:end -->`` of that markdown file, with the command, machine and date;
- ``--plot``: test bpd against parameters (log x), one curve per model, the published MNIST
  numbers (HCLT 1.20, RAT-SPN 1.67 bpd) as dashed lines;
- ``--samples`` / ``--inpaint``: samples and bottom-half inpaintings of the model with the best
  *valid* bpd (the test bpd never selects anything).

``--from-runs DIR ...`` makes the same report from finished ``hmmlvd image train`` folders
(long runs made one at a time, e.g. on all 55,000 MNIST training images) instead of running
anything: each folder's results.json must hold valid and test bpd (``image train`` without
``--no-eval``, or ``hmmlvd image eval --record``); ``--section`` names the marked section.
With ``--valid-only`` it reports a search instead (runs scored on valid alone, the test split
untouched): each run's flags beside the first's, parameters, train time, epochs run (best)
and valid bpd; no plot, no pictures.

With the default 10,000 training images and 5 epochs the default configs take about 22
minutes on one thread of a 2-core AMD EPYC VM (per-epoch times measured once, extrapolated;
the two LVD runs are three quarters of it). ``--tiny`` runs K = 2 of every model on 200
images, a smoke test of seconds; ``--dry-run`` prints the runs' commands.

Run::

    python scripts/image_sweep.py --write docs/results.md
    python scripts/image_sweep.py --configs hclt:16 pd:8 --epochs 3 --out runs/sweep
    python scripts/image_sweep.py --device cuda --train-size 0 --epochs 20 \\
        --configs hclt:32 hclt:64 hclt:128 pd:16 pd:32 rat:16 lvd:16 lvd:32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from hmmlvd.core.errors import DataError, HMMLVDError
from hmmlvd.core.report import clone_relative, provenance, save_figure, write_section
from hmmlvd.data.images import load_images
from hmmlvd.pipelines.image_models import load_image_model

# image_bpd is the file next to this one (scripts/ is not a package; it is on sys.path when
# this file runs as a script, not when a test loads it).
_SCRIPTS = str(Path(__file__).resolve().parent)
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)
import image_bpd  # noqa: E402

SECTION = "image_bpd"
#: Baselines from below to above the LVD models' parameter counts (about 20-25 minutes on 2
#: CPU cores with the default 10,000 training images and 5 epochs).
DEFAULT_CONFIGS = ("hclt:16", "hclt:32", "hclt:64", "pd:8", "pd:16", "pd:32", "rat:2", "rat:4",
                   "lvd:2", "lvd:4")
TINY_CONFIGS = ("hclt:2", "pd:2", "rat:2", "lvd:2")
TINY_FLAGS = ("--train-size", "200", "--eval-size", "100", "--epochs", "1", "--batch-size",
              "100", "--tree-images", "200", "--repetitions", "2")
TINY_LVD_FLAGS = ("--num-latents", "2", "--top-units", "2", "--feature-dim", "8",
                  "--stage-a-epochs", "1", "--stage-b-epochs", "1")
NAMES = {"hclt": "HCLT", "pd": "PD", "rat": "RAT-SPN", "lvd": "LVD (patch latents)",
         "lvd-tied": "LVD, tied inputs"}
COLOURS = {"lvd": "tab:blue", "hclt": "tab:orange", "pd": "tab:green", "rat": "tab:red",
           "lvd-tied": "tab:purple"}
#: Sweep-only series: name -> (image_bpd model, extra flags).
VARIANTS = {"lvd-tied": ("lvd", ["--tie-inputs"])}
#: Published MNIST test bpd (full training set, long training): model -> (label, bpd).
PUBLISHED = {"hclt": ("HCLT", 1.20), "rat": ("RAT-SPN", 1.67)}


# ----- command line -------------------------------------------------------------------------
def config(text: str) -> tuple[str, int]:
    """``MODEL:K`` -> (model, K); MODEL is an image_bpd model or a variant (``lvd-tied``)."""
    model, _, size = text.partition(":")
    known = [*image_bpd.MODELS, *VARIANTS]
    if model not in known or not size.isdigit() or int(size) < 1:
        raise argparse.ArgumentTypeError(
            f"a config is MODEL:K with MODEL in {', '.join(known)} and K >= 1, got {text!r}")
    return model, int(size)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """This script's flags and the rest (passed to every image_bpd run)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Any other flag goes to every run: see "
                                       "scripts/image_bpd.py --help.")
    p.add_argument("--configs", type=config, nargs="+", default=None, metavar="MODEL:K",
                   help=f"runs (default {' '.join(DEFAULT_CONFIGS)})")
    p.add_argument("--lvd-flags", default="", metavar="FLAGS",
                   help='extra flags of the lvd runs only, e.g. "--num-latents 32 --patch 4"')
    p.add_argument("--tiny", action="store_true",
                   help=f"smoke test: {' '.join(TINY_CONFIGS)} with {' '.join(TINY_FLAGS)}")
    p.add_argument("--dry-run", action="store_true", help="print the runs' commands and stop")
    p.add_argument("--reuse", action="store_true",
                   help="take a run whose command and settings (defaults included) already "
                        "have a line in the out folder's results.jsonl from there (and its "
                        "saved model) instead of training it again: an interrupted or "
                        "extended sweep goes on")
    p.add_argument("--from-runs", type=Path, nargs="+", default=None, metavar="DIR",
                   help="report these finished `hmmlvd image train` folders instead of running "
                        "configs")
    p.add_argument("--valid-only", action="store_true",
                   help="with --from-runs: a search table on valid bpd alone (runs scored with "
                        "`hmmlvd image eval --splits valid --record`); no test, plot or pictures")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="with --from-runs: the dataset folder for the inpaintings (default "
                        "../shared/data/<dataset>); otherwise passed to every run")
    p.add_argument("--write", type=Path, default=None, metavar="MARKDOWN",
                   help=f"write the table into this file's section (--section, default "
                        f"{SECTION})")
    p.add_argument("--section", default=SECTION, help=f"marked section name (default {SECTION})")
    p.add_argument("--plot", type=Path, default=Path("docs/image_bpd.png"), metavar="PNG",
                   help="test bpd vs parameters (default docs/image_bpd.png)")
    p.add_argument("--samples", type=Path, default=Path("docs/image_samples.png"),
                   metavar="PNG", help="samples of the best model on valid bpd "
                                       "(default docs/image_samples.png)")
    p.add_argument("--inpaint", type=Path, default=Path("docs/image_inpaint.png"),
                   metavar="PNG", help="inpaintings of the best model on valid bpd "
                                       "(default docs/image_inpaint.png)")
    args, rest = p.parse_known_args(argv)
    if args.data_dir is not None and args.from_runs is None:
        rest += ["--data-dir", str(args.data_dir)]
    if args.configs is None:
        args.configs = [config(c) for c in (TINY_CONFIGS if args.tiny else DEFAULT_CONFIGS)]
    return args, rest


def run_argv(model: str, size: int, args: argparse.Namespace, rest: Sequence[str]
             ) -> list[str]:
    """The image_bpd command line of one config (later flags override earlier ones)."""
    model, extra = VARIANTS.get(model, (model, []))
    argv = [*(TINY_FLAGS if args.tiny else ()), *rest, "--model", model, "--size", str(size),
            *extra]
    if model == "lvd":
        argv += [*(TINY_LVD_FLAGS if args.tiny else ()), *shlex.split(args.lvd_flags)]
    return argv


def finished_runs(path: Path) -> dict[str, dict]:
    """Results already in ``path`` (a results.jsonl) by their command; the last one wins."""
    if not path.is_file():
        return {}
    results = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip())
    return {r["command"]: r for r in results}


def same_settings(saved: dict, run_args: argparse.Namespace) -> bool:
    """Whether a results.jsonl line's settings are those of ``run_args``; a flag the line
    lacks (one added after it was written) counts as that flag's default."""
    current = image_bpd.jsonable(run_args)
    parser = image_bpd.common_parser()
    if run_args.model == "lvd":
        image_bpd.add_lvd_flags(parser)
    return set(saved) <= set(current) and all(
        saved.get(name, parser.get_default(name)) == value for name, value in current.items())


# ----- report -------------------------------------------------------------------------------
def series(result: dict) -> str:
    """The curve a result belongs to: its model, or a variant of it."""
    if result["model"] == "lvd" and result["settings"].get("tie_inputs"):
        return "lvd-tied"
    return result["model"]


def model_name(result: dict) -> str:
    """A result's model in words; LVD's with its latent values per patch (C)."""
    name, latents = NAMES[series(result)], result["settings"].get("num_latents")
    return f"{name}, C={latents}" if result["model"] == "lvd" and latents else name


def table(results: Sequence[dict]) -> str:
    """The results as a markdown table, in run order; the best valid bpd in bold."""
    best = min(r["valid_bpd"] for r in results)
    lines = ["| model | K | parameters | train time (s) | valid bpd | test bpd |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {model_name(r)} | {r['size']} | {r['params']:,} | "
                     f"{r['train_seconds']:.1f} | {valid_cell(r, best)} | {r['test_bpd']:.4f} |")
    return "\n".join(lines)


def valid_cell(result: dict, best: float) -> str:
    """A result's valid bpd for a table, in bold when it is the ``best``."""
    valid = f"{result['valid_bpd']:.4f}"
    return f"**{valid}**" if result["valid_bpd"] == best else valid


def settings_line(first: dict) -> str:
    """The training settings every run shared."""
    s = first["settings"]
    return (f"{s['dataset']}: {first['train_images']:,} training images, valid / test "
            f"{first['valid_images']:,} / {first['test_images']:,} images | EM epochs "
            f"{s['epochs']} (lvd: finetuning), batch {s['batch_size']}, step size "
            f"{s['step_size']}, pseudocount {s['pseudocount']} | device {s['device']}, "
            f"threads {torch.get_num_threads()} | seed {s['seed']}")


def notes(results: Sequence[dict], best: dict, from_runs: bool = False) -> list[str]:
    """Bullets under the table: structures, how times and bpd are counted, references."""
    structures = dict.fromkeys(f"{NAMES[series(r)]}: {r['structure']}." for r in results)
    published = ", ".join(f"{label} {bpd:.2f}" for label, bpd in PUBLISHED.values())
    lines = [*structures,
            f"bpd = mean over images of -log2 p(x) / {results[0]['dimensions']} (pixels as "
            "256-level categories). "
            "Train time: structure learning + EM (lvd: the whole pipeline: features, k-means, "
            "stages a, b, c); evaluation not included.",
            f"Best on valid bpd: {NAMES[series(best)]} K={best['size']} (the samples and "
            "inpaintings are its); the test column is reported only, never used to choose "
            "anything.",
            f"Published MNIST test bpd (full 60K training set, long training; not our runs): "
            f"{published}.",
            ("Every run's results.json (per-epoch log-likelihoods, timings) is in its folder."
             if from_runs else "Every run's JSON line, with its exact image_bpd command, is in "
             "results.jsonl of the run folder.")]
    return [f"- {line}" for line in lines]


def plot(results: Sequence[dict], path: Path, title: str) -> None:
    """Test bpd against parameters (log x), a curve per model, published dashed lines."""
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    for model, marker in zip([*image_bpd.MODELS, *VARIANTS], "s^ovD", strict=True):
        points = sorted((r["params"], r["test_bpd"]) for r in results if series(r) == model)
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, color=COLOURS[model],
                    label=NAMES[model])
    for model, (label, bpd) in PUBLISHED.items():
        ax.axhline(bpd, linestyle="--", color=COLOURS[model], linewidth=1,
                   label=f"{label}, published ({bpd:.2f})")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test bits per dimension")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def save_grids(model: object, best: dict, shape: tuple, test_images: object,
               args: argparse.Namespace) -> None:
    """Samples and bottom-half inpaintings (of ``test_images``) of the best model on valid,
    into ``--samples`` and ``--inpaint``."""
    title = f"{NAMES[series(best)]} K={best['size']} (best valid bpd)"
    image_bpd.save_samples(model, shape, args.samples, f"samples: {title}")
    image_bpd.save_inpaintings(model, test_images, args.inpaint,
                               f"bottom-half inpainting: {title}")


def pictures(args: argparse.Namespace) -> str:
    """The markdown of the plot and the two grids, linked from ``--write``'s folder."""
    return "\n\n".join(f"![{name}]({link(p, args.write)})" for name, p in (
        ("test bpd vs parameters", args.plot), ("samples", args.samples),
        ("inpaintings", args.inpaint)))


def link(path: Path, markdown: Path) -> str:
    """``path`` relative to the markdown file's folder (how the file should link it)."""
    return Path(os.path.relpath(path.resolve(), markdown.resolve().parent)).as_posix()


# ----- reports of finished runs -------------------------------------------------------------
def training_chain(folder: Path) -> list[dict]:
    """The results.json of a run folder after those of the runs it continued (``--init``)."""
    result = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    earlier = result.get("init")
    if earlier and (Path(earlier) / "results.json").is_file():
        return [*training_chain(Path(earlier)), result]
    return [result]


def run_folder_result(folder: Path, splits: Sequence[str] = ("valid", "test")) -> dict:
    """A finished ``hmmlvd image train`` folder's results.json, in the form the report reads
    (``settings``: what :func:`series` needs; ``train_seconds`` and ``commands`` include the
    runs it was continued from with ``--init``); DataError if it lacks the bpd of a split in
    ``splits``."""
    path = folder / "results.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    needed = [f"{split}_bpd" for split in splits] + ["params", "model", "size"]
    missing = [k for k in needed if k not in result]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)}: evaluate the model with "
                        f"`hmmlvd image eval --model {folder} --splits {' '.join(splits)} "
                        "--record`")
    shape = result.get("image_shape", [0])
    chain = training_chain(folder)  # a continued run's train time includes its start's
    result["train_seconds"] = sum(r["train_seconds"] for r in chain)
    result["commands"] = [r["command"] for r in chain]
    structure = result.get("structure", "")
    latents = re.search(r"num_latents=(\d+)", structure)
    return {**result, "folder": str(folder), "dimensions": math.prod(shape),
            "settings": {"tie_inputs": "tie_inputs=True" in structure,
                         "num_latents": int(latents.group(1)) if latents else None}}


#: Flags of a search's commands that say where and how fast, not what was trained.
PLACE_FLAGS = {"--out": 1, "--data-dir": 1, "--threads": 1, "--device": 1, "--quiet": 0,
               "--no-eval": 0, "--resume": 0}


def run_flags(command: str) -> dict[str, str]:
    """The training flags of an ``hmmlvd image train`` command (after ``train``) and their
    values ("" for a switch), without the :data:`PLACE_FLAGS`."""
    words = shlex.split(command)
    words = words[words.index("train") + 1:] if "train" in words else words
    flags: dict[str, str] = {}
    for i, word in enumerate(words):
        if word.startswith("--") and word not in PLACE_FLAGS:
            following = words[i + 1] if i + 1 < len(words) else "--"
            flags[word] = "" if following.startswith("--") else following
    return flags


def flags_text(flags: dict[str, str]) -> str:
    return " ".join(f"{flag} {value}".strip() for flag, value in flags.items())


def search_table(results: Sequence[dict]) -> str:
    """Runs scored on valid only: each run's flags that differ from the first run's (the first
    row lists its own), parameters, train time, epochs run (best by valid) and valid bpd (the
    best in bold)."""
    best = min(r["valid_bpd"] for r in results)
    base = run_flags(results[0]["commands"][-1])
    lines = ["| run | flags | parameters | train time (s) | epochs (best) | valid bpd |",
             "|---|---|---:|---:|---:|---:|"]
    for i, r in enumerate(results):
        flags = run_flags(r["commands"][-1])
        changed = {f: v for f, v in flags.items() if base.get(f) != v}
        dropped = [f"no {f}" for f in base if f not in flags]
        shown = flags_text(flags if i == 0 else changed)
        shown = " ".join([shown, *dropped]).strip() if i else shown
        history = r.get("history", {})
        trained = history.get("stage_c", history.get("em", []))
        valid_curve = history.get("valid", [])
        epochs = f"{len(trained)}"
        if valid_curve:
            epochs += f" ({max(range(len(valid_curve)), key=valid_curve.__getitem__) + 1})"
        lines.append(f"| {Path(r['folder']).name} | `{shown or '(as above)'}` | {r['params']:,} | "
                     f"{r['train_seconds']:.0f} | {epochs} | {valid_cell(r, best)} |")
    return "\n".join(lines)


def report_search(args: argparse.Namespace) -> None:
    """``--from-runs --valid-only``: the search table and (with --write) its section."""
    try:
        results = [run_folder_result(folder, ("valid",)) for folder in args.from_runs]
    except HMMLVDError as exc:
        raise SystemExit(f"error: {exc}") from exc
    printed = search_table(results)
    print(printed)
    if args.write is not None:
        body = "\n".join([provenance("Search on valid bpd (`scripts/image_sweep.py --from-runs "
                                     "--valid-only`)", torch.device("cpu")), "", printed, "",
                          "- Only valid bpd is shown (and only it chose): test is computed once, "
                          "for the runs a results table takes.",
                          "- Each run's results.json (per-epoch log-likelihoods, timings) "
                          "is in its folder; flags after the first row are those that differ."])
        write_section(args.write, args.section, body)
        print(f"wrote the {args.section} section of {args.write}", file=sys.stderr)


def report_runs(args: argparse.Namespace) -> None:
    """The table, plot, grids and (with --write) section of ``--from-runs`` folders."""
    try:
        results = [run_folder_result(folder) for folder in args.from_runs]
        best = min(results, key=lambda r: r["valid_bpd"])
        model, record = load_image_model(Path(best["folder"]))
        dataset = record.get("dataset", "mnist")
        folder = args.data_dir or Path("../shared/data") / dataset
        data = load_images(dataset, folder)
        save_grids(model, best, tuple(record["image_shape"]), data.test, args)
    except HMMLVDError as exc:
        raise SystemExit(f"error: {exc}") from exc
    first = results[0]
    plot(results, args.plot, f"{first['dataset']}, {first['train_images']:,} training images "
         "(finished image train runs)")
    printed = table(results)
    print(printed)
    if args.write is not None:
        commands = ["- " + " then ".join(f"`{clone_relative(c)}`" for c in [*r["commands"], *(
            [r["eval_command"]] if "eval_command" in r else [])]) for r in results]
        body = "\n".join([provenance("Image bits per dimension of finished runs "
                                     "(`scripts/image_sweep.py --from-runs`)",
                                     torch.device("cpu")), "",
                          printed, "", "Runs, in table order:", "", *commands, "",
                          *notes(results, best, from_runs=True), "", pictures(args)])
        write_section(args.write, args.section, body)
        print(f"wrote the {args.section} section of {args.write}", file=sys.stderr)


# ----- main ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    args, rest = parse_args(argv)
    if args.from_runs is not None:
        if rest:
            raise SystemExit(f"error: --from-runs runs nothing; unknown flags {rest}")
        (report_search if args.valid_only else report_runs)(args)
        return
    runs = [image_bpd.parse_args(run_argv(m, k, args, rest)) for m, k in args.configs]
    if args.dry_run:
        print("\n".join(r.command for r in runs))
        return
    if len({(r.dataset, r.data_dir, r.train_size, r.eval_size) for r in runs}) > 1:
        raise SystemExit("error: the runs share one dataset: give --dataset, --data-dir, "
                         "--train-size and --eval-size outside --lvd-flags")
    try:
        data = image_bpd.load_data(runs[0])
        done = finished_runs(runs[0].out / "results.jsonl") if args.reuse else {}
        results, best, best_model, best_args = [], None, None, None
        for i, run_args in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {run_args.command}", file=sys.stderr, flush=True)
            previous = done.get(run_args.command)
            if previous is not None and same_settings(previous["settings"], run_args):
                result, model = previous, None
                print("  reused from results.jsonl", file=sys.stderr, flush=True)
            else:
                result, model = image_bpd.run(run_args, data)
            results.append(result)
            if best is None or result["valid_bpd"] < best["valid_bpd"]:
                best, best_model, best_args = result, model, run_args
            del model
        if best_model is None:
            best_model = image_bpd.load_model(best_args)
        save_grids(best_model, best, data.shape, data.test, args)
    except HMMLVDError as exc:
        raise SystemExit(f"error: {exc}") from exc
    first = results[0]
    plot(results, args.plot, f"{first['settings']['dataset']}, {first['train_images']:,} "
         f"training images, EM epochs: {first['settings']['epochs']}")
    printed = "\n".join([settings_line(first), "", table(results)])
    print(printed)
    if args.write is not None:
        body = "\n".join([provenance("Image bits per dimension (`scripts/image_sweep.py`)",
                                     runs[0].device), "", printed, "",
                          *notes(results, best), "", pictures(args)])
        write_section(args.write, args.section, body)
        print(f"wrote the {args.section} section of {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""LVD vs random initialisation of HMMs on WikiText-2, under the same EM schedule, beside the
unigram and Kneser–Ney baselines on the same token streams.

For each number of hidden states H: an HMM initialised by latent variable distillation (suffix
embeddings of ``--lvd-windows`` train windows -> k-means per position -> closed-form MLE) and
one from seeded random parameters are both trained with the same mini-batch EM schedule on
``--max-windows`` train windows (default: all 2.09M), then evaluated by sliding perplexity
(each token predicted from the 31 tokens before it). The suffix embeddings are computed once
(cached on disk) and shared by every H.

Each (initialisation, H) is one run of the text pipeline (what ``hmmlvd lvd`` and ``hmmlvd
train`` run: :func:`hmmlvd.pipelines.text.train_text`) in its own folder under ``--out``, named
by init, H and a digest of every setting: checkpoints while it trains, then the pipeline's
``results.json`` (this script's settings under ``record``) and, with ``--save-models``, the
model; the table's row is read from ``results.json``. Rerunning the same command skips finished
runs and resumes unfinished ones from their last checkpoint (a killed sweep loses at most
``--checkpoint-every`` EM steps), and a changed setting starts new runs instead of mixing old
ones in. Ctrl-C or SIGTERM during EM checkpoints and stops (exit 130 or 143). Run folders of
earlier versions of this script count too: a finished one's ``results.json`` holds the row
itself (its model under ``model/``); a stopped one resumes from its checkpoints, its
``init.json`` holding the initialisation's seconds.

Writes a markdown table and a PNG plot (test perplexity vs H, baselines as horizontal lines):

    python scripts/lvd_vs_random.py --data-dir ../shared/data/wikitext-2 \\
        --hidden-states 64 128 256 512 --write docs/results.md

``--keep-rows`` keeps the rows already recorded in the ``--write`` file for an (init, H) this
command does not run (a sweep that adds a larger H to a table whose run folders are gone); each
row says when it finished, and the section quotes the replaced record's command, machine and
date.

Schedule search (valid perplexity only; test is never computed): ``--splits valid`` with any
schedule flags, then ``--search-table`` lists every finished run under ``--out`` by its valid
perplexity:

    python scripts/lvd_vs_random.py --data-dir ../shared/data/wikitext-2 --hidden-states 64 \\
        --splits valid --batch-size 16384 --step-size 0.3 --out runs/search
    python scripts/lvd_vs_random.py --out runs/search --search-table --write docs/results.md
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from matplotlib.figure import Figure

from hmmlvd.cli_flags import (
    add_data_args,
    add_em_args,
    add_lvd_args,
    lvd_settings_from,
    train_config_from,
)
from hmmlvd.core.device import resolve_device, resolve_dtype
from hmmlvd.core.errors import CheckpointError, HMMLVDError
from hmmlvd.core.outdir import output_folder
from hmmlvd.core.report import (
    provenance,
    read_section,
    read_tables,
    save_figure,
    write_section,
)
from hmmlvd.data import TokenWindows, WikiText, load_wikitext
from hmmlvd.em.config import EMConfig
from hmmlvd.em.stop import TrainingInterrupted
from hmmlvd.hmm.train import IMPLIED  # what HMM runs did before a setting existed
from hmmlvd.lvd.text.distill import DEFAULT_LVD_WINDOWS, LVDSettings, lvd_subset
from hmmlvd.lvd.text.encoder import resolve_encoder_dtype
from hmmlvd.ngram import BaselineRow, baseline_perplexities
from hmmlvd.pipelines.text import EvalSettings, TextTraining, train_text

SECTION = "lvd_vs_random"
SEARCH_SECTION = "lvd_schedule_search"
INITS = ("LVD", "random")
RESULTS = "results.json"
INIT_FILE = "init.json"  # initialisation seconds, in the folders of runs an earlier version began
EVAL_BATCH = 2048  # windows per sliding-perplexity batch


@dataclass
class Row:
    """One trained model: initialisation, size, perplexity per evaluated split, stage seconds
    and the settings it was trained with."""

    init: str
    num_states: int
    ppl: dict[str, float]
    seconds: dict[str, float]
    settings: dict = field(default_factory=dict)
    finished: str = ""  # the date (YYYY-MM-DD, UTC) its results were written


# ----- settings and run folders ---------------------------------------------------------------
def train_config(args: argparse.Namespace) -> EMConfig:
    """The CLI's EM settings from the same flags (mini-batch phases; one checkpoint kept)."""
    return replace(train_config_from(args), keep_checkpoints=1)


#: EM settings every run's digest names (the schedule as the list of phases that runs have
#: always been named by); any other setting is named only when it differs from what runs made
#: before it existed did (:data:`IMPLIED`, else its default), so that adding a setting keeps
#: the folders of earlier runs (finished or in progress) theirs.
DIGEST_FIELDS = ("batch_size", "pseudocount", "full_batch", "seed")
SCHEDULE = ("epochs", "step_size", "phase2_epochs", "phase2_step_size", "final_full_batch")
NOT_RESULTS = ("checkpoint_every", "keep_checkpoints")  # where and how often, not what


def schedule_phases(config: EMConfig) -> list[dict]:
    """The schedule as phases: [first] [+ second] [+ full-batch epochs at step size 1]."""
    phases = [{"epochs": config.epochs, "step_size": config.step_size, "full_batch": False}]
    if config.phase2_epochs:
        phases.append({"epochs": config.phase2_epochs, "step_size": config.phase2_step_size,
                       "full_batch": False})
    if config.final_full_batch:
        phases.append({"epochs": config.final_full_batch, "step_size": 1.0, "full_batch": True})
    return phases


def digest_config(config: EMConfig) -> dict:
    """The EM settings of a run's digest (see :data:`DIGEST_FIELDS`)."""
    defaults = EMConfig().to_dict()
    named = {k: v for k, v in config.to_dict().items() if k in DIGEST_FIELDS or (
        k not in (*NOT_RESULTS, *SCHEDULE) and v != IMPLIED.get(k, defaults[k]))}
    return {"phases": schedule_phases(config), **named}


def run_settings(init: str, h: int, args: argparse.Namespace, data: WikiText,
                 windows: TokenWindows) -> dict:
    """Everything that determines a run's result (its folder is named by a digest of it)."""
    config = digest_config(train_config(args))
    settings = {"init": init, "num_states": h, "length": args.length, "seed": args.seed,
                "train_windows": len(windows), "train_tokens": len(data.train),
                "vocab_size": len(data.vocab), "train_config": config,
                "max_eval_tokens": args.max_eval_tokens}
    if init == "LVD":
        settings["lvd"] = {"lvd_windows": args.lvd_windows, "encoder": args.encoder,
                           "encoder_dtype": args.encoder_dtype, "mode": args.embedding_mode,
                           "kmeans_sample": args.kmeans_sample,
                           "kmeans_iters": args.kmeans_iters}
    return settings


def run_folder(out: Path, settings: dict) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return out / f"{settings['init'].lower()}-h{settings['num_states']}-{digest}"


def row_of(results: dict, folder: Path) -> Row:
    """The table row of the finished run in ``folder`` whose ``results.json`` holds
    ``results``: what :func:`~hmmlvd.pipelines.text.train_text` wrote (this script's settings
    under ``record``; stage seconds: the LVD initialisation's, else those of an earlier
    version's ``init.json``, the epochs' EM seconds summed, the splits' evaluation seconds
    summed), or, from an earlier version of this script, the row itself."""
    finished = datetime.datetime.fromtimestamp((folder / RESULTS).stat().st_mtime,
                                               datetime.UTC).strftime("%Y-%m-%d")
    if "ppl" in results:
        return replace(Row(**results), finished=finished)
    settings, scores = results["record"], results["eval"]
    seconds = dict(results.get("lvd_seconds") or _init_seconds(folder))
    seconds["em"] = sum(epoch["seconds"] for epoch in results["history"])
    seconds["eval"] = sum(split["seconds"] for split in scores.values())
    return Row(settings["init"], settings["num_states"],
               {split: score["sliding_ppl"] for split, score in scores.items()}, seconds,
               settings, finished)


def _init_seconds(folder: Path) -> dict[str, float]:
    """The initialisation seconds an earlier version recorded in ``folder/init.json`` (a run it
    started and this one resumed); none when there is no such file."""
    path = folder / INIT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def finished_row(folder: Path, settings: dict, splits: Sequence[str]) -> Row | None:
    """The row of a finished run in ``folder`` with these settings and every split, else None."""
    path = folder / RESULTS
    if not path.is_file():
        return None
    try:
        row = row_of(json.loads(path.read_text(encoding="utf-8")), folder)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path} is damaged ({type(exc).__name__}: {exc}); delete it to "
                              "rerun that run") from exc
    if row.settings != settings or not set(splits) <= set(row.ppl):
        return None
    return row


# ----- one run --------------------------------------------------------------------------------
def run_one(init: str, h: int, data: WikiText, windows: TokenWindows, lvd: LVDSettings,
            args: argparse.Namespace) -> Row:
    """Reuse a finished run, else train it (resuming its checkpoints if it has some) with the
    text pipeline, then delete its checkpoints."""
    settings = run_settings(init, h, args, data, windows)
    folder = run_folder(args.out, settings)
    row = finished_row(folder, settings, args.splits)
    if row is not None:
        print(f"{folder.name}: finished earlier, reused")
        return row
    resume = (folder / "checkpoints" / "latest").is_file()
    print(f"{folder.name}: " + ("resuming its stopped run" if resume else
                               f"{init} init, EM on {len(windows):,} windows"))
    is_lvd = init == "LVD"
    summary = train_text(TextTraining(
        out=folder, data_dir=args.data_dir, hidden_states=h, length=args.length,
        max_windows=args.max_windows or None, em=train_config(args),
        lvd=lvd if is_lvd else None, lvd_windows=args.lvd_windows if is_lvd else None,
        resume=resume, evaluate=EvalSettings(splits=tuple(args.splits), batch_size=EVAL_BATCH,
                                             max_tokens=args.max_eval_tokens),
        device=str(args.device), command="lvd" if is_lvd else "train",
        save_model=args.save_models, record=settings))
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the run is done
    return row_of(summary, folder)


# ----- report ---------------------------------------------------------------------------------
#: stage -> its column in the table (the stage seconds of :class:`Row`)
SECONDS = {"embed": "embed s", "cluster": "cluster s", "mle": "MLE s", "em": "EM s",
           "eval": "eval s"}


def recorded_provenance(path: Path) -> str:
    """The command, machine and date lines of ``path``'s section, joined on one line."""
    lines = [line.strip() for line in read_section(path, SECTION).splitlines()]
    return "; ".join(line for line in lines if line.startswith(("Command:", "Machine:", "Date:")))


def recorded_rows(path: Path) -> list[Row]:
    """The HMM rows of the table recorded in ``path``'s section (``--keep-rows``): perplexity
    per split, stage seconds and EM dtype as written (a table written before the dtype column
    existed ran float32, :data:`IMPLIED`), finished on the date its row says, else the date of
    the section's provenance."""
    body = read_section(path, SECTION)
    date = next((line.split()[1] for line in body.splitlines() if line.startswith("Date: ")),
                "-")
    rows = []
    for table_rows in read_tables(body):
        for cells in table_rows:
            name, h = cells.get("model", ""), cells.get("H", "")
            if not name.endswith(" init") or not h.isdigit():
                continue

            def number(head: str, cells: dict[str, str] = cells) -> float | None:
                value = cells.get(head, "-")
                return None if value in ("", "-") else float(value)

            ppl = {s: number(f"{s} ppl") for s in ("valid", "test")}
            seconds = {k: number(head) for k, head in SECONDS.items()}
            finished = cells.get("finished", "-")
            rows.append(Row(name.removesuffix(" init"), int(h),
                            {s: v for s, v in ppl.items() if v is not None},
                            {k: v for k, v in seconds.items() if v is not None},
                            {"train_config": {"dtype": cells.get("EM dtype", IMPLIED["dtype"])}},
                            date if finished == "-" else finished))
    return rows


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(rows: Sequence[Row], baselines: Sequence[BaselineRow], splits: Sequence[str]) -> str:
    """Markdown: baselines first, then one line per (H, init) with stage seconds."""
    head = (["model", "H"] + [f"{s} ppl" for s in splits] +
            ["EM dtype", *SECONDS.values(), "finished"])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for b in baselines:
        lines.append(f"| {b.name} (train stream) | - | " +
                     " | ".join(fmt(b.perplexity.get(s)) for s in splits) + " |" + " - |" * 7)
    for r in sorted(rows, key=lambda r: (r.num_states, r.init)):
        cells = [f"{r.init} init", str(r.num_states),
                 *(fmt(r.ppl.get(s)) for s in splits),
                 r.settings["train_config"].get("dtype", IMPLIED["dtype"]),
                 *(f"{r.seconds[k]:.0f}" if k in r.seconds else "-" for k in SECONDS),
                 r.finished or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], baselines: Sequence[BaselineRow], split: str, path: Path,
         title: str) -> None:
    """Perplexity on ``split`` vs H, one curve per initialisation, baselines as lines."""
    rows = [r for r in rows if split in r.ppl]
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot()
    for init, marker in (("random", "o"), ("LVD", "s")):
        points = sorted((r.num_states, r.ppl[split]) for r in rows if r.init == init)
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, label=f"HMM, {init} init")
    models = [r.ppl[split] for r in rows]
    # a baseline far above every HMM (the unigram) would squash the curves: it stays in the
    # legend, marked "above"
    top = 1.1 * max(models + [b.perplexity[split] for b in baselines
                              if b.perplexity[split] <= 2 * max(models)])
    for b, style in zip(baselines, (":", "--", "-."), strict=False):
        value = b.perplexity[split]
        ax.axhline(value, color="grey", linestyle=style, linewidth=1,
                   label=f"{b.name} ({value:.0f}{', above' if value > top else ''})")
    ax.set_ylim(0.95 * min(models + [b.perplexity[split] for b in baselines]), top)
    ax.set_xscale("log", base=2)
    sizes = sorted({r.num_states for r in rows})
    ax.set_xticks(sizes, [str(h) for h in sizes])
    ax.minorticks_off()
    ax.set_xlabel("hidden states H")
    ax.set_ylabel(f"{split} perplexity (sliding)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def settings_line(args: argparse.Namespace, subset: str, lvd_count: int) -> str:
    """One sentence with every setting a reader needs to rerun the comparison."""
    config = train_config(args)
    kmeans = f" on {args.kmeans_sample:,} windows" if args.kmeans_sample else ""
    tokens = f", first {args.max_eval_tokens:,} tokens" if args.max_eval_tokens else ""
    return (f"Settings: EM on {subset}; EM {json.dumps(schedule_phases(config))}, "
            f"batch {config.batch_size}, pseudocount {config.pseudocount}, EM compute dtype "
            f"{args.dtype}, seed {args.seed}; "
            f"LVD from {lvd_count:,} windows (seeded subset): encoder "
            f"{args.encoder or 'packaged all-MiniLM-L6-v2'} ({args.encoder_dtype}, "
            f"{args.embedding_mode} suffix embeddings, computed once and read from the cache "
            f"by later runs), k-means {args.kmeans_iters} iterations{kmeans}. Perplexity: "
            f"sliding, {args.length - 1}-token context{tokens}; baselines fitted on the train "
            "stream and scored on the same tokens. Stage seconds are each run's own.")


def search_table(out: Path) -> str:
    """Every finished run under ``out``: its schedule and valid perplexity, best first per H."""
    rows = []
    for path in sorted(out.glob(f"*/{RESULTS}")):
        row = row_of(json.loads(path.read_text(encoding="utf-8")), path.parent)
        if "valid" in row.ppl:
            rows.append(row)
    if not rows:
        raise HMMLVDError(f"no finished runs with a valid perplexity under {out}")
    lines = ["| H | init | EM windows | batch | phases (epochs x step) | pseudocount | LVD windows"
             " | valid ppl |", "|---:|---|---:|---:|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r.num_states, r.init, r.ppl["valid"])):
        c = r.settings["train_config"]
        phases = ", ".join(f"{p['epochs']} x {'full batch' if p.get('full_batch') else ''}"
                           f"{'' if p.get('full_batch') else p['step_size']}"
                           for p in c["phases"])
        lvd = r.settings.get("lvd", {}).get("lvd_windows")
        lines.append(f"| {r.num_states} | {r.init} | {r.settings['train_windows']:,} | "
                     f"{c['batch_size']} | {phases} | {c['pseudocount']} | "
                     f"{'-' if lvd is None else f'{lvd:,}'} | {r.ppl['valid']:.1f} |")
    return "\n".join(lines)


# ----- command line ---------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p)
    p.add_argument("--hidden-states", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--inits", nargs="+", choices=INITS, default=list(INITS))
    p.add_argument("--max-windows", type=int, default=0,
                   help="EM on a seeded random subset of N train windows (0, default: all)")
    p.add_argument("--length", type=int, default=32)
    add_em_args(p)  # the CLI's EM flags and defaults (hmmlvd train / lvd)
    add_lvd_args(p)  # the CLI's distillation flags
    p.add_argument("--splits", nargs="+", choices=["valid", "test"], default=["valid", "test"],
                   help="splits to evaluate (schedule search: valid only)")
    p.add_argument("--max-eval-tokens", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/lvd_vs_random"),
                   help="one folder per run: checkpoints, then results.json (reused)")
    p.add_argument("--checkpoint-every", type=int, default=25,
                   help="checkpoint every N EM steps (and at every epoch end)")
    p.add_argument("--save-models", action="store_true",
                   help="keep each trained model in its run folder (H=512: 2.2 GB each; "
                        "HMM.from_pretrained(folder) loads it)")
    p.add_argument("--search-table", action="store_true",
                   help="only list the finished runs under --out by valid perplexity")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG path (default: lvd_vs_random.png beside --write, else in --out)")
    p.add_argument("--write", type=Path, default=None,
                   help="also record the table in this markdown file (e.g. docs/results.md)")
    p.add_argument("--keep-rows", action="store_true",
                   help="with --write: keep the rows already recorded there for an (init, H) "
                        "this command does not run (their run folders may be gone); the plot "
                        "shows them too")
    args = p.parse_args(argv)
    if args.keep_rows and not args.write:
        p.error("--keep-rows needs --write (the file whose recorded rows it keeps)")
    if args.full_batch:
        p.error("--full-batch is not supported here (use --final-full-batch N)")
    if args.lvd_windows is None:
        args.lvd_windows = DEFAULT_LVD_WINDOWS
    if args.max_windows < 0 or args.lvd_windows < 1:
        p.error("--max-windows must be >= 0 and --lvd-windows >= 1")
    args.device = resolve_device(args.device)
    # the dtype that runs, so that run folders and the report name it (not "auto")
    args.encoder_dtype = str(resolve_encoder_dtype(args.encoder_dtype, args.device)
                             ).removeprefix("torch.")
    args.dtype = str(resolve_dtype(args.dtype, args.device)).removeprefix("torch.")
    if args.plot is None:
        args.plot = (args.write.parent if args.write else args.out) / "lvd_vs_random.png"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.search_table:
            report = search_table(args.out)
            print(report)
            if args.write:
                write_section(args.write, SEARCH_SECTION, "\n".join([
                    "## EM schedule search on valid (`scripts/lvd_vs_random.py --search-table`)",
                    "", f"Runs under `{args.out}`; chosen by valid perplexity only.", "",
                    report]))
            return 0
        with output_folder(args.out):  # one sweep at a time per --out
            sweep(args)
    except TrainingInterrupted as exc:  # the run in progress saved a checkpoint first
        print(f"\nlvd_vs_random: stopped by signal {exc.signal}; every run is saved: rerun the "
              "same command to resume", file=sys.stderr)
        return 128 + exc.signal
    except KeyboardInterrupt:
        print("\nlvd_vs_random: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except HMMLVDError as exc:
        print(f"lvd_vs_random: error: {exc}", file=sys.stderr)
        return 2
    return 0


def sweep(args: argparse.Namespace) -> None:
    data = load_wikitext(args.data_dir)
    windows = TokenWindows(data.train, args.length, max_windows=args.max_windows or None,
                           seed=args.seed)
    # the subset the pipeline embeds for every LVD run (checked here, before any training)
    lvd_count = len(lvd_subset(data.train, args.length, args.lvd_windows, seed=args.seed))
    lvd = lvd_settings_from(args)  # one embedding cache for every H: the encoder runs once
    subset = (f"a seeded random subset of {len(windows):,} of the {len(windows.view):,} train "
              "windows" if len(windows) < len(windows.view) else f"all {len(windows):,} "
              "train windows")
    print(f"LVD vs random init, H = {args.hidden_states}: LVD from {lvd_count:,} windows, EM "
          f"on {subset}")
    streams = {s: data.split(s)[: args.max_eval_tokens] for s in args.splits}
    baselines = baseline_perplexities(data, streams=streams)
    rows = []
    for h in args.hidden_states:
        for init in args.inits:
            rows.append(run_one(init, h, data, windows, lvd, args))
            print(f"H={h} {init}: " + ", ".join(f"{s} ppl {v:.1f}"
                                                  for s, v in rows[-1].ppl.items()))
    ran = {(r.init, r.num_states) for r in rows}
    kept = [r for r in recorded_rows(args.write) if (r.init, r.num_states) not in ran
            ] if args.keep_rows else []
    rows += kept
    report = table(rows, baselines, args.splits)
    described = settings_line(args, subset, lvd_count)
    if kept:
        described += (" Rows of H = " + ", ".join(str(h) for h in sorted(
            {r.num_states for r in kept})) + " are kept from the table this one replaced "
            "(`--keep-rows`; their run folders are not under --out), each finished on the date "
            "in its row; that table's record: " + recorded_provenance(args.write) +
            " (the history of this file holds every earlier record).")
    print("\n" + report + "\n\n" + described)
    split = "test" if "test" in args.splits else args.splits[0]
    plot(rows, baselines, split, args.plot, f"WikiText-2: EM on {len(windows):,} windows, "
         f"LVD from {lvd_count:,}")
    print(f"plot: {args.plot}")
    if args.write:
        body = "\n".join([provenance("LVD vs random init (`scripts/lvd_vs_random.py`)",
                                     args.device), "", described, "", report, "",
                          f"![{split} perplexity vs H]({args.plot.name})"])
        write_section(args.write, SECTION, body)


if __name__ == "__main__":
    sys.exit(main())

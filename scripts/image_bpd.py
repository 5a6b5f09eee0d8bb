"""Train one image model with mini-batch EM and report its bits per dimension.

Models: the baselines of ``hmmlvd.image.baselines`` (``hclt``, ``pd``, ``rat``: structure
learned or fixed, random parameters, then ``fit``: EM) and ``lvd``
(``hmmlvd.pipelines.image_lvd.train_image_lvd``: patch latents distilled from patch features,
sub-circuits and top circuit fitted to them, then the whole circuit finetuned by EM). Every
model has K = ``--size`` units per region (for ``lvd``: the sub-circuits' K, ``sub_units``).
The model is trained on the first ``--train-size`` training images (the train split is already
shuffled), evaluated on the valid and test splits (``--eval-size`` limits both), and

- one line is printed and one JSON line appended to ``<out>/results.jsonl``: ``model``,
  ``size``, ``params``, ``train_seconds`` (structure + EM, or the whole LVD pipeline),
  ``valid_bpd``, ``test_bpd``, ``command``, ``settings`` (plus ``structure``, ``summary``,
  ``timings``, ``history`` and ``date``);
- the model is saved (``save_image_model``: its files and ``image.json``) in
  ``<out>/<model>-<size>/``, where ``hmmlvd image eval | sample | inpaint`` read it;
- ``--samples PNG``: an 8x8 grid of samples; ``--inpaint PNG``: the bottom half of 8 test
  images inpainted (rows: original, masked, 3 inpaintings).

Choose settings on the valid bpd only; the test bpd is reported, never tuned on.

LVD flags map 1:1 to the fields of ``hmmlvd.lvd.image.distill.PatchLVDConfig`` (``--patch``,
``--num-latents``, ``--top-units``, ``--featuriser``, ...) and
``hmmlvd.pipelines.image_lvd.LVDStages`` (``--stage-a-epochs``, ``--stage-b-epochs``; listed by
``--model lvd --help``), except the fields set by shared flags: ``sub_units`` = ``--size``,
``tree_bins`` and ``seed`` = the flags of those names. The EM flags are stage (c)'s (EM
finetuning on pixels, what the baselines get) and, as ``LVDStages`` says, those of stages (a)
and (b).

This script is a thin caller of the library that ``hmmlvd image`` runs
(``hmmlvd.pipelines.image_models``, ``hmmlvd.image.grids``) and shares its flag definitions
(``hmmlvd.cli_image``); it adds the results.jsonl record that ``scripts/image_sweep.py`` reads.

Run::

    python scripts/image_bpd.py --model hclt --size 16 --epochs 5 --samples runs/hclt.png
    python scripts/image_bpd.py --model lvd --size 8 --num-latents 16 --patch 7
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from hmmlvd.cli_image import (
    DATASETS,
    add_data_flags,
    add_lvd_flags,
    add_model_flags,
    em_config,
    lvd_values,
    structure_config,
    wants_lvd,
)
from hmmlvd.cli_image import load_data as load_flagged_data
from hmmlvd.core.device import resolve_device
from hmmlvd.core.errors import DataError, HMMLVDError
from hmmlvd.data.images import ImageData
from hmmlvd.image.grids import save_inpaintings, save_samples
from hmmlvd.pipelines.image import ImageTraining
from hmmlvd.pipelines.image_models import (
    MODELS,
    image_bpd,
    load_image_model,
    save_image_model,
    train_image_model,
)
from hmmlvd.pipelines.image_models import lvd_config as pipeline_lvd_config

__all__ = ["DATASETS", "MODELS", "jsonable", "load_data", "load_model", "lvd_config", "main",
           "model_folder", "parse_args", "run", "save_inpaintings", "save_samples"]


# ----- command line -------------------------------------------------------------------------
def common_parser() -> argparse.ArgumentParser:
    """Every flag except the LVD ones (added by ``add_lvd_flags`` for ``--model lvd``)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="LVD flags (fields of PatchLVDConfig) are listed by --model lvd --help.")
    add_model_flags(p)
    add_data_flags(p)
    p.add_argument("--out", type=Path, default=Path("runs/image_bpd"),
                   help="results.jsonl and saved circuits go here (default runs/image_bpd)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--samples", type=Path, default=None, metavar="PNG",
                   help="save an 8x8 grid of samples here")
    p.add_argument("--inpaint", type=Path, default=None, metavar="PNG",
                   help="save bottom-half inpaintings of 8 test images here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = common_parser()
    if wants_lvd(argv):
        add_lvd_flags(parser)
    args = parser.parse_args(argv)
    try:  # the configs check the flags (naming them), before any work
        ImageTraining(model=args.model, size=args.size, out=args.out, dataset=args.dataset,
                      train_size=args.train_size, eval_size=args.eval_size,
                      em=em_config(args), structure=structure_config(args),
                      lvd=lvd_values(args), batch_size=args.batch_size)
    except DataError as exc:
        parser.error(str(exc))
    try:
        args.device = resolve_device(args.device)
    except DataError as exc:
        parser.error(str(exc))
    if args.data_dir is None:
        args.data_dir = Path("../shared/data") / args.dataset
    args.command = shlex.join(["python", "scripts/image_bpd.py", *argv])
    return args


def load_data(args: argparse.Namespace) -> ImageData:
    """The dataset, train cut to ``--train-size`` and valid / test to ``--eval-size``."""
    return load_flagged_data(args)


def lvd_config(args: argparse.Namespace):
    """The PatchLVDConfig and LVDStages of the command line."""
    return pipeline_lvd_config(args.size, em_config(args), structure_config(args),
                               **lvd_values(args))


# ----- one run ------------------------------------------------------------------------------
def jsonable(args: argparse.Namespace) -> dict:
    """The parsed flags as JSON values."""
    out = {}
    for name, value in vars(args).items():
        if name != "command":
            out[name] = str(value) if isinstance(value, Path | torch.device) else value
    return out


def model_folder(args: argparse.Namespace) -> Path:
    """Where a run saves its model: ``<out>/<model>[-tied]-<K>``."""
    tied = "-tied" if getattr(args, "tie_inputs", False) else ""
    return args.out / f"{args.model}{tied}-{args.size}"


def load_model(args: argparse.Namespace):
    """The model a finished run saved (a Circuit or a PatchCircuit)."""
    return load_image_model(model_folder(args), device=args.device)[0]


def run(args: argparse.Namespace, data: ImageData | None = None) -> tuple[dict, object]:
    """Train, evaluate and record one model (``data``: the loaded dataset, already cut, to
    skip loading it again). Returns the JSON result and the trained model."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_data(args) if data is None else data
    trained = train_image_model(args.model, data.train, args.size, em_config(args),
                                structure_config(args), lvd_values(args), args.device,
                                progress=not args.quiet)
    model = trained.model.eval()
    bpd = {split: image_bpd(model, data.split(split), args.batch_size, progress=not args.quiet)
           for split in ("valid", "test")}
    result = {"model": args.model, "size": args.size, "params": model.num_parameters(),
              "train_seconds": trained.seconds, "valid_bpd": bpd["valid"],
              "test_bpd": bpd["test"], "command": args.command, "settings": jsonable(args),
              "structure": trained.structure, "summary": model.summary(),
              "dimensions": model.num_variables, "train_images": len(data.train),
              "valid_images": len(data.valid), "test_images": len(data.test),
              "timings": trained.history["timings"],
              "history": {k: v for k, v in trained.history.items() if k != "timings"},
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    folder = save_image_model(model, model_folder(args), {
        "dataset": args.dataset, "model": args.model, "size": args.size,
        "image_shape": list(data.shape), "train_images": len(data.train),
        "structure": trained.structure, "command": args.command})
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{args.dataset} {args.model} K={args.size}: {result['params']:,} parameters, "
          f"trained in {trained.seconds:.1f} s on {len(data.train)} images, valid "
          f"{bpd['valid']:.4f} bpd, test {bpd['test']:.4f} bpd (saved in {folder})", flush=True)
    title = f"{args.model.upper()} K={args.size}, {args.dataset}"
    if args.samples is not None:
        save_samples(model, data.shape, args.samples, f"samples: {title}", args.seed)
    if args.inpaint is not None:
        save_inpaintings(model, data.test, args.inpaint, f"bottom-half inpainting: {title}",
                         args.seed)
    return result, model


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except HMMLVDError as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()

"""Command line for image circuits: ``hmmlvd image train | eval | sample | inpaint``.

    hmmlvd image train --model hclt --size 16 --epochs 5 --data-dir ../shared/data/mnist \\
        --out runs/hclt16
    hmmlvd image train --model lvd --size 4 --num-latents 16 --out runs/lvd4
    hmmlvd image train --model lvd --size 4 --num-latents 16 --out runs/lvd4 --resume
    hmmlvd image eval --model runs/hclt16 --data-dir ../shared/data/mnist
    hmmlvd image sample --model runs/hclt16 --out runs/hclt16/samples.png
    hmmlvd image inpaint --model runs/hclt16 --mask bottom --out runs/hclt16/inpaint.png

Models: the baselines of ``hmmlvd.image.baselines`` (``hclt``, ``pd``, ``rat``) and image LVD
(``lvd``; its flags, the fields of ``hmmlvd.lvd.image.train.PatchLVDConfig``, are listed by
``hmmlvd image train --model lvd --help``). Everything is done by the library
(:mod:`hmmlvd.pipelines.image_models`, :mod:`hmmlvd.image.grids`); ``scripts/image_bpd.py``
reuses the flag definitions below. :func:`hmmlvd.cli.main` routes ``hmmlvd image ...`` here
(:func:`parse_image_args`), resolves ``--device`` and reports errors in one line
(``hmmlvd image: error: ...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path

import torch

from hmmlvd.cli_em import add_em_flags, em_config_from
from hmmlvd.core.atomic import atomic_write_json
from hmmlvd.core.errors import DataError
from hmmlvd.core.outdir import (
    output_folder,
)
from hmmlvd.data.images import ImageData
from hmmlvd.em.config import EMConfig
from hmmlvd.image.baselines import StructureConfig
from hmmlvd.image.grids import MASKS
from hmmlvd.pc.em import CIRCUIT_EM
from hmmlvd.pipelines.image import (
    ImageTraining,
    evaluate_splits,
    load_image_data,
    train_image,
)
from hmmlvd.pipelines.image_models import (
    DATASET_SHAPES,
    LEVELS,
    LVD_SHARED,
    MODELS,
    load_image_model,
)

DATASETS = ("mnist", "cifar10")
SPLITS = ("train", "valid", "test")


# ----- flags shared with scripts/image_bpd.py ------------------------------------------------
def add_model_flags(p: argparse.ArgumentParser) -> None:
    """--model, --size, the EM flags, --seed and the baseline structure flags."""
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--size", type=int, required=True, metavar="K",
                   help="units per region (lvd: K of the sub-circuits)")
    add_em_flags(p, CIRCUIT_EM, "images", text=False, notes={
        "epochs": "lvd: the finetuning epochs, stage c", "final-step-size": "lvd: of each stage",
        "final-full-batch": "lvd: of stage c", "batch-size": "and per evaluation batch",
        "seed": "also seeds parameters and RAT trees"})
    structure = p.add_argument_group("baseline structures (hmmlvd.image.baselines)")
    structure.add_argument("--delta", type=int, default=None,
                           help="PD split step (default min(H, W) // 4: 7 on 28x28)")
    structure.add_argument("--depth", type=int, default=None,
                           help="RAT split depth (default: leaves of >= 8 pixels; 6 on 28x28)")
    structure.add_argument("--repetitions", type=int, default=10,
                           help="RAT random trees (default 10)")
    structure.add_argument("--tree-bins", type=int, default=8,
                           help="grey-level bins for Chow–Liu trees (HCLT and lvd; default 8)")
    structure.add_argument("--tree-images", type=int, default=5000,
                           help="HCLT: images its Chow–Liu tree is learned from (5000)")


def add_data_flags(p: argparse.ArgumentParser, dataset_default: str | None = "mnist") -> None:
    """--dataset, --data-dir, --train-size, --eval-size."""
    p.add_argument("--dataset", choices=DATASETS, default=dataset_default,
                   help=f"default {dataset_default or 'the one the model was trained on'}")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset folder (default ../shared/data/<dataset>)")
    p.add_argument("--train-size", type=int, default=10_000, metavar="N",
                   help="training images, the first N of the train split (0: all; 10000)")
    p.add_argument("--eval-size", type=int, default=0, metavar="N",
                   help="evaluate on the first N valid and test images (0: all; default)")


def lvd_fields() -> list[dataclasses.Field]:
    """The fields of PatchLVDConfig (imported here: hmmlvd.lvd loads transformers)."""
    from hmmlvd.lvd.image.train import PatchLVDConfig

    return list(dataclasses.fields(PatchLVDConfig))


def add_lvd_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per PatchLVDConfig field that no shared flag sets, with its default."""
    group = parser.add_argument_group(
        "lvd (PatchLVDConfig fields; --size sets sub_units, --epochs stage_c_epochs)")
    taken = {action.dest for action in parser._actions}
    for field in lvd_fields():
        if field.name in LVD_SHARED or field.name in taken:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction,
                               default=field.default)
        else:
            kind = str if field.default is None else type(field.default)
            group.add_argument(flag, type=kind, default=field.default,
                               help=f"default {field.default}")


def wants_lvd(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for ``--model lvd`` (its flags are added only then, since
    naming them loads hmmlvd.lvd and transformers)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--model")
    return first.parse_known_args(list(argv))[0].model == "lvd"


def check_model_flags(args: argparse.Namespace) -> None:
    """DataError naming the first model, EM, structure or data flag out of range, before any
    work. ``--tree-bins`` may not exceed the 256 grey levels, and an LVD ``--context`` may not
    exceed the side of the dataset's images (wider windows hold only padding, and their size
    grows as the square of the context)."""
    for name in ("size", "batch_size", "tree_images", "repetitions"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("epochs", "train_size", "eval_size", "patience", "final_full_batch"):
        if getattr(args, name, 0) < 0:
            raise DataError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0 < args.step_size <= 1 or not 0 <= args.pseudocount < math.inf:
        raise DataError(f"--step-size must be in (0, 1] and --pseudocount >= 0, got "
                        f"{args.step_size} and {args.pseudocount}")
    final = getattr(args, "final_step_size", None)
    if final is not None and not 0 < final <= 1:
        raise DataError(f"--final-step-size must be in (0, 1], got {final}")
    if not 2 <= args.tree_bins <= LEVELS:
        raise DataError(f"--tree-bins must be in [2, {LEVELS}] (pixels have {LEVELS} grey "
                        f"levels), got {args.tree_bins}")
    context = getattr(args, "context", None)  # an LVD flag: set with --model lvd only
    shape = DATASET_SHAPES.get(getattr(args, "dataset", None) or "")
    if context is not None and shape is not None and not 0 <= context <= min(shape[:2]):
        raise DataError(f"--context must be in [0, {min(shape[:2])}] (pixels around a patch; "
                        f"{args.dataset} images are {_sides(shape[:2])}), got {context}")


def em_config(args: argparse.Namespace) -> EMConfig:
    """The EM settings of the flags (the rest: :data:`~hmmlvd.pc.em.CIRCUIT_EM`'s)."""
    return em_config_from(args, CIRCUIT_EM)


def structure_config(args: argparse.Namespace) -> StructureConfig:
    """The baseline structure settings of the flags."""
    return StructureConfig(args.delta, args.depth, args.repetitions, args.tree_bins,
                           args.tree_images)


def lvd_values(args: argparse.Namespace) -> dict:
    """The LVD flags' values by PatchLVDConfig field (empty unless ``--model lvd``)."""
    if args.model != "lvd":
        return {}
    return {f.name: getattr(args, f.name) for f in lvd_fields() if f.name not in LVD_SHARED}


def load_data(args: argparse.Namespace, dataset: str | None = None) -> ImageData:
    """The dataset of the flags, train cut to ``--train-size`` and valid / test to
    ``--eval-size`` (0: all)."""
    return load_image_data(dataset or args.dataset, args.data_dir,
                           vars(args).get("train_size", 0), args.eval_size)


# ----- the parser ----------------------------------------------------------------------------
def build_image_parser(with_lvd: bool = False) -> argparse.ArgumentParser:
    """``hmmlvd image`` and its subcommands (``with_lvd``: train gets the LVD flags)."""
    parser = argparse.ArgumentParser(prog="hmmlvd image", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="image_command", required=True)

    tr = sub.add_parser("train", help="build, train (EM), save and evaluate one model",
                        epilog="LVD flags (fields of PatchLVDConfig) are listed by --model lvd "
                               "--help.")
    add_model_flags(tr)
    add_data_flags(tr)
    tr.add_argument("--out", type=Path, required=True,
                    help="model folder: model files, image.json, results.json")
    tr.add_argument("--no-eval", action="store_true", help="skip the valid / test bpd")
    tr.add_argument("--init", type=Path, default=None, metavar="DIR",
                    help="start EM from this saved model (trained by image train with the same "
                         "--model and --size; its structure is kept, the structure flags are "
                         "not used)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run stopped in OUT (Ctrl-C, SIGTERM or a crash) from its "
                         "last checkpoint; the settings must be the same")
    if with_lvd:
        add_lvd_flags(tr)
    tr.set_defaults(run=cmd_train)

    ev = sub.add_parser("eval", help="bits per dimension of a saved model")
    ev.add_argument("--model", type=Path, required=True, help="saved model folder")
    add_data_flags(ev, dataset_default=None)
    ev.add_argument("--splits", nargs="+", choices=SPLITS, default=["valid", "test"])
    ev.add_argument("--batch-size", type=int, default=512, help="images per batch (512)")
    ev.add_argument("--record", action="store_true",
                    help="also write the numbers into the model folder's results.json (as "
                         "image train does without --no-eval)")
    ev.set_defaults(run=cmd_eval)

    sa = sub.add_parser("sample", help="a PNG grid of samples of a saved model")
    sa.add_argument("--model", type=Path, required=True, help="saved model folder")
    sa.add_argument("--out", type=Path, required=True, metavar="PNG")
    sa.add_argument("--grid", type=int, default=8, help="G x G samples (default 8)")
    sa.add_argument("--seed", type=int, default=0)
    sa.set_defaults(run=cmd_sample)

    ip = sub.add_parser("inpaint", help="a PNG grid of inpaintings of dataset images")
    ip.add_argument("--model", type=Path, required=True, help="saved model folder")
    ip.add_argument("--out", type=Path, required=True, metavar="PNG")
    ip.add_argument("--dataset", choices=DATASETS, default=None,
                    help="default: the one the model was trained on, else mnist")
    ip.add_argument("--data-dir", type=Path, default=None,
                    help="dataset folder (default ../shared/data/<dataset>)")
    ip.add_argument("--split", choices=SPLITS, default="test")
    ip.add_argument("--mask", choices=MASKS, default="bottom", help="region to fill in")
    ip.add_argument("--num-images", type=int, default=8, help="images (default 8)")
    ip.add_argument("--draws", type=int, default=3, help="draws per image (default 3)")
    ip.add_argument("--seed", type=int, default=0)
    ip.set_defaults(run=cmd_inpaint, eval_size=0)

    for p in (tr, ev, sa, ip):
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
        p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_image_args(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed ``hmmlvd image`` arguments (``argv`` after ``image``); ``command`` is
    "image", ``run`` the subcommand's function, ``argv`` the command line."""
    argv = list(argv)
    with_lvd = argv[:1] == ["train"] and wants_lvd(argv[1:])
    args = build_image_parser(with_lvd).parse_args(argv)
    args.command = "image"
    args.command_line = shlex.join(["hmmlvd", "image", *argv])
    return args


# ----- the subcommands (args.device already resolved by hmmlvd.cli) --------------------------
def _prepare(args: argparse.Namespace) -> None:
    for name, minimum in (("threads", 1), ("grid", 1), ("num_images", 1), ("draws", 1),
                          ("batch_size", 1), ("train_size", 0), ("eval_size", 0)):
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise DataError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def image_training_from(args: argparse.Namespace) -> ImageTraining:
    """The training run named by the ``hmmlvd image train`` flags."""
    return ImageTraining(
        model=args.model, size=args.size, out=args.out, dataset=args.dataset,
        data_dir=args.data_dir, train_size=args.train_size, eval_size=args.eval_size,
        em=em_config(args), structure=structure_config(args), lvd=lvd_values(args),
        init=args.init, resume=args.resume, evaluate=not args.no_eval,
        batch_size=args.batch_size, device=args.device, quiet=args.quiet,
        command_line=args.command_line)


def cmd_train(args: argparse.Namespace) -> None:
    """Train, save and evaluate (:func:`hmmlvd.pipelines.image.train_image`)."""
    _prepare(args)
    check_model_flags(args)
    train_image(image_training_from(args))


def _load(args: argparse.Namespace) -> tuple[object, dict, str]:
    """The saved model, its record and the dataset to use (flag, record, else mnist)."""
    model, record = load_image_model(args.model, device=args.device)
    dataset = getattr(args, "dataset", None) or record.get("dataset") or "mnist"
    if dataset not in DATASETS:
        raise DataError(f"{args.model} records dataset {dataset!r:.40}; give --dataset")
    return model.eval(), record, dataset


def _check_shape(args: argparse.Namespace, record: dict, data: ImageData) -> None:
    if tuple(record["image_shape"]) != data.shape:
        raise DataError(f"the model {args.model} is for {_sides(record['image_shape'])} "
                        f"images, the dataset's are {_sides(data.shape)}")


def _sides(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)


def cmd_eval(args: argparse.Namespace) -> None:
    """Print the bits per dimension of each ``--splits`` split."""
    _prepare(args)
    model, record, dataset = _load(args)
    data = load_data(args, dataset)
    _check_shape(args, record, data)
    result: dict = {}
    line = evaluate_splits(model, data, args.splits, args.batch_size, args.quiet, result)
    if args.record:
        with output_folder(args.model):  # locked while its results.json is rewritten
            path = args.model / "results.json"
            try:
                saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
                if not isinstance(saved, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                raise DataError(f"{path} is damaged ({exc}); move it away to record "
                                "anew") from exc
            atomic_write_json(path, {**saved, **result, "eval_command": args.command_line})
        line += f" (recorded in {path})"
    print(f"{dataset} {record.get('model', 'model')} ({args.model}): {line}", flush=True)


def cmd_sample(args: argparse.Namespace) -> None:
    """Save a G x G grid of samples."""
    from hmmlvd.image.grids import save_samples  # matplotlib

    _prepare(args)
    model, record, _ = _load(args)
    path = save_samples(model, record["image_shape"], args.out, f"samples: {_title(record)}",
                        args.seed, args.grid)
    print(f"saved {args.grid}x{args.grid} samples in {path}", flush=True)


def cmd_inpaint(args: argparse.Namespace) -> None:
    """Save a grid of ``--mask`` inpaintings of the first ``--num-images`` of a split."""
    from hmmlvd.image.grids import save_inpaintings  # matplotlib

    _prepare(args)
    model, record, dataset = _load(args)
    data = load_data(args, dataset)
    _check_shape(args, record, data)
    images = data.split(args.split)[:args.num_images]
    if len(images) == 0:
        raise DataError(f"the {args.split} split of {dataset} has no images")
    path = save_inpaintings(model, images, args.out,
                            f"{args.mask} inpainting: {_title(record)}", args.seed, args.mask,
                            len(images), args.draws)
    print(f"saved {args.mask} inpaintings of {len(images)} {args.split} images in {path}",
          flush=True)


def _title(record: dict) -> str:
    name = str(record.get("model", "model")).upper()
    size = f" K={record['size']}" if "size" in record else ""
    return f"{name}{size}, {record.get('dataset', '')}".rstrip(", ")

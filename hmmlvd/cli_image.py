"""Command line for image circuits: ``hmmlvd image train | eval | sample | inpaint``.

    hmmlvd image train --model hclt --size 16 --epochs 5 --data-dir ../shared/data/mnist \\
        --out runs/hclt16
    hmmlvd image train --model lvd --size 4 --num-latents 16 --out runs/lvd4
    hmmlvd image train --model lvd --size 4 --num-latents 16 --out runs/lvd4 --resume
    hmmlvd image eval --model runs/hclt16 --data-dir ../shared/data/mnist
    hmmlvd image sample --model runs/hclt16 --out runs/hclt16/samples.png
    hmmlvd image inpaint --model runs/hclt16 --mask bottom --out runs/hclt16/inpaint.png

Models: the baselines of ``hmmlvd.image.baselines`` (``hclt``, ``pd``, ``rat``) and image LVD
(``lvd``; its flags, the fields of ``hmmlvd.lvd.image.distill.PatchLVDConfig`` and
``hmmlvd.pipelines.image_lvd.LVDStages``, are listed by ``hmmlvd image train --model lvd
--help``). This module only parses flags into the library's configs, which check them (naming
the flag); everything is done by the library (:mod:`hmmlvd.pipelines.image`,
:mod:`hmmlvd.pipelines.image_models`, :mod:`hmmlvd.image.grids`); ``scripts/image_bpd.py``
reuses the flag definitions below. :func:`hmmlvd.cli.main` routes ``hmmlvd image ...`` here
(:func:`parse_image_args`), resolves ``--device`` and reports errors in one line
(``hmmlvd image: error: ...``).
"""

from __future__ import annotations

import argparse
import json
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
from hmmlvd.core.validate import check_int
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
    MODELS,
    load_image_model,
    lvd_flag_fields,
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


def add_lvd_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of image LVD's own (:func:`~hmmlvd.pipelines.image_models.
    lvd_flag_fields`) that no shared flag sets, with its default."""
    group = parser.add_argument_group(
        "lvd (PatchLVDConfig and LVDStages fields; --size sets sub_units, --seed seed, the EM "
        "flags stage c and, as LVDStages says, stages a and b)")
    taken = {action.dest for action in parser._actions}
    for field in lvd_flag_fields():
        if field.name in taken:
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


def em_config(args: argparse.Namespace) -> EMConfig:
    """The EM settings of the flags (the rest: :data:`~hmmlvd.pc.em.CIRCUIT_EM`'s)."""
    return em_config_from(args, CIRCUIT_EM)


def structure_config(args: argparse.Namespace) -> StructureConfig:
    """The baseline structure settings of the flags."""
    return StructureConfig(args.delta, args.depth, args.repetitions, args.tree_bins,
                           args.tree_images)


def lvd_values(args: argparse.Namespace) -> dict:
    """The LVD flags' values by setting name (empty unless ``--model lvd``)."""
    if args.model != "lvd":
        return {}
    flags = vars(args)
    return {f.name: flags[f.name] for f in lvd_flag_fields() if f.name in flags}


def load_data(args: argparse.Namespace, dataset: str | None = None) -> ImageData:
    """The dataset of the flags, train cut to ``--train-size`` and valid / test to
    ``--eval-size`` (0: all)."""
    return load_image_data(dataset or args.dataset, args.data_dir, args.train_size,
                           args.eval_size)


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
    sa.set_defaults(run=cmd_sample, dataset=None)

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
    ip.set_defaults(run=cmd_inpaint, train_size=0, eval_size=0)

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
def _set_threads(args: argparse.Namespace) -> None:
    """``--threads``: torch's CPU threads (a count >= 1), when given."""
    if args.threads is not None:
        torch.set_num_threads(check_int(args.threads, "--threads", 1))


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
    run = image_training_from(args)  # checked: a bad flag is refused before any work
    _set_threads(args)
    train_image(run)


def _load(args: argparse.Namespace) -> tuple[object, dict, str]:
    """The saved model, its record and the dataset to use (flag, record, else mnist)."""
    model, record = load_image_model(args.model, device=args.device)
    dataset = args.dataset or record.get("dataset") or "mnist"
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
    _set_threads(args)
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

    _set_threads(args)
    model, record, _ = _load(args)
    path = save_samples(model, record["image_shape"], args.out, f"samples: {_title(record)}",
                        args.seed, args.grid)
    print(f"saved {args.grid}x{args.grid} samples in {path}", flush=True)


def cmd_inpaint(args: argparse.Namespace) -> None:
    """Save a grid of ``--mask`` inpaintings of the first ``--num-images`` of a split."""
    from hmmlvd.image.grids import check_inpainting, save_inpaintings  # matplotlib

    check_inpainting(args.num_images, args.draws)
    _set_threads(args)
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

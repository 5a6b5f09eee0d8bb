"""Train one image model with mini-batch EM and report its bits per dimension.

Models: the baselines of ``hmmlvd.pc.image_models`` (``hclt``, ``pd``, ``rat``: structure
learned or fixed, random parameters, then ``fit_em``) and ``lvd`` (``train_patch_lvd``: patch
latents distilled from patch features, sub-circuits and top circuit fitted to them, then the
whole circuit finetuned by EM). Every model has K = ``--size`` units per region (for ``lvd``:
the sub-circuits' K, ``sub_units``). The model is trained on the first ``--train-size``
training images (the train split is already shuffled), evaluated on the valid and test splits
(``--eval-size`` limits both), and

- one line is printed and one JSON line appended to ``<out>/results.jsonl``: ``model``,
  ``size``, ``params``, ``train_seconds`` (structure + EM, or the whole LVD pipeline),
  ``valid_bpd``, ``test_bpd``, ``command``, ``settings`` (plus ``structure``, ``summary``,
  ``timings``, ``history`` and ``date``);
- a baseline circuit is saved with ``save_circuit`` in ``<out>/<model>-<size>/``;
- ``--samples PNG``: an 8x8 grid of samples; ``--inpaint PNG``: the bottom half of 8 test
  images inpainted (rows: original, masked, 3 inpaintings).

Choose settings on the valid bpd only; the test bpd is reported, never tuned on.

LVD flags map 1:1 to the fields of ``hmmlvd.lvd.image.PatchLVDConfig`` (``--patch``,
``--num-latents``, ``--top-units``, ``--featuriser``, ...; listed by ``--model lvd --help``),
except the fields set by shared flags: ``sub_units`` = ``--size``, ``stage_c_epochs`` (EM
finetuning on pixels, what the baselines get) = ``--epochs``, and ``batch_size``,
``step_size``, ``pseudocount``, ``tree_bins``, ``seed`` = the flags of those names.

Run::

    python scripts/image_bpd.py --model hclt --size 16 --epochs 5 --samples runs/hclt.png
    python scripts/image_bpd.py --model lvd --size 8 --num-latents 16 --patch 7
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from hmmlvd.data.images import ImageData, flatten, load_images
from hmmlvd.errors import HMMLVDError
from hmmlvd.pc import (
    Circuit,
    evaluate_bpd,
    fit_em,
    inpaint,
    load_circuit,
    load_patch_circuit,
    sample,
    save_circuit,
    save_patch_circuit,
)
from hmmlvd.pc.image_models import (
    BASELINES,
    build_baseline,
    default_delta,
    default_depth,
)

MODELS = ("lvd", *BASELINES)
DATASETS = ("mnist", "cifar10")
LEVELS = 256  # pixels are categorical grey levels 0..255
#: PatchLVDConfig fields set by a shared flag (field -> args attribute).
LVD_SHARED = {"sub_units": "size", "stage_c_epochs": "epochs"}
SAMPLE_GRID = 8  # --samples draws an 8x8 grid
INPAINT_IMAGES, INPAINT_DRAWS = 8, 3
MASK_COLOUR = (110, 20, 20)  # how the masked row shows missing pixels (RGB)


# ----- command line -------------------------------------------------------------------------
def common_parser() -> argparse.ArgumentParser:
    """Every flag except the LVD ones (added by ``add_lvd_arguments`` for ``--model lvd``)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="LVD flags (fields of PatchLVDConfig) are listed by --model lvd --help.")
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--size", type=int, required=True, metavar="K",
                   help="units per region (lvd: K of the sub-circuits)")
    p.add_argument("--epochs", type=int, default=5,
                   help="mini-batch EM epochs (lvd: finetuning epochs, stage c; default 5)")
    p.add_argument("--batch-size", type=int, default=256, help="images per EM step (256)")
    p.add_argument("--step-size", type=float, default=0.1, help="EM step size (default 0.1)")
    p.add_argument("--pseudocount", type=float, default=0.01,
                   help="M-step pseudocount (default 0.01)")
    p.add_argument("--train-size", type=int, default=10_000, metavar="N",
                   help="training images, the first N of the train split (0: all; 10000)")
    p.add_argument("--eval-size", type=int, default=0, metavar="N",
                   help="evaluate on the first N valid and test images (0: all; default)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset folder (default ../shared/data/<dataset>)")
    p.add_argument("--out", type=Path, default=Path("runs/image_bpd"),
                   help="results.jsonl and saved circuits go here (default runs/image_bpd)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=0, help="seeds parameters, RAT trees, EM order")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    structure = p.add_argument_group("baseline structures (hmmlvd.pc.image_models)")
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
    p.add_argument("--samples", type=Path, default=None, metavar="PNG",
                   help="save an 8x8 grid of samples here")
    p.add_argument("--inpaint", type=Path, default=None, metavar="PNG",
                   help="save bottom-half inpaintings of 8 test images here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def lvd_fields() -> list[dataclasses.Field]:
    """The fields of PatchLVDConfig (imported here: hmmlvd.lvd loads transformers)."""
    from hmmlvd.lvd.image import PatchLVDConfig

    return list(dataclasses.fields(PatchLVDConfig))


def add_lvd_arguments(parser: argparse.ArgumentParser) -> None:
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--model", choices=MODELS)
    parser = common_parser()
    if first.parse_known_args(argv)[0].model == "lvd":
        add_lvd_arguments(parser)
    args = parser.parse_args(argv)
    for name in ("size", "epochs", "batch_size", "tree_images", "repetitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("train_size", "eval_size"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0 (0: all)")
    if not 0 < args.step_size <= 1 or args.pseudocount < 0:
        parser.error("--step-size must be in (0, 1] and --pseudocount >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch sees no CUDA GPU")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.data_dir is None:
        args.data_dir = Path("../shared/data") / args.dataset
    args.command = shlex.join(["python", "scripts/image_bpd.py", *argv])
    return args


# ----- data and training --------------------------------------------------------------------
def load_data(args: argparse.Namespace) -> ImageData:
    """The dataset, train cut to ``--train-size`` and valid / test to ``--eval-size``."""
    try:
        data = load_images(args.dataset, args.data_dir)
    except HMMLVDError as exc:
        raise type(exc)(f"cannot load {args.dataset} from {args.data_dir} ({exc}); give its "
                        "folder with --data-dir") from exc
    cut = {"train": args.train_size, "valid": args.eval_size, "test": args.eval_size}
    for split, n in cut.items():
        if n:
            setattr(data, split, data.split(split)[:n])
    return data


def structure_note(args: argparse.Namespace, shape: tuple[int, int, int], train_size: int
                   ) -> str:
    """The baseline's structure settings in words (defaults resolved)."""
    if args.model == "pd":
        delta = default_delta(shape) if args.delta is None else args.delta
        return f"split step delta={delta}, einsum layers"
    if args.model == "rat":
        depth = default_depth(int(np.prod(shape))) if args.depth is None else args.depth
        return f"depth={depth} x {args.repetitions} repetitions, einsum layers"
    return (f"Chow–Liu tree of {min(args.tree_images, train_size)} training images "
            f"binned to {args.tree_bins} levels, rooted at its centre, Hadamard layers")


def train_baseline(args: argparse.Namespace, train: np.ndarray, shape: tuple[int, int, int]
                   ) -> tuple[Circuit, dict]:
    """Build the baseline on ``train`` [N, H, W, C] uint8 and train it by mini-batch EM.
    Returns it and {"timings": seconds of structure and EM, "em": mean training
    log-likelihood of each epoch}."""
    pixels = flatten(train)
    started = time.perf_counter()
    circuit = build_baseline(args.model, pixels, shape, args.size, args.seed, LEVELS,
                             args.delta, args.depth, args.repetitions, args.tree_bins,
                             args.tree_images).to(args.device)
    built = time.perf_counter()
    history = fit_em(circuit, torch.as_tensor(pixels).to(args.device), args.epochs,
                     args.batch_size, args.step_size, args.pseudocount, seed=args.seed,
                     progress=not args.quiet)
    return circuit, {"timings": {"structure": built - started,
                                 "em": time.perf_counter() - built},
                     "em": history}


def lvd_config(args: argparse.Namespace):
    """The PatchLVDConfig of the command line."""
    from hmmlvd.lvd.image import PatchLVDConfig

    return PatchLVDConfig(**{f.name: getattr(args, LVD_SHARED.get(f.name, f.name))
                             for f in lvd_fields()})


def train_lvd(args: argparse.Namespace, train: np.ndarray):
    """``train_patch_lvd`` on ``train`` [N, H, W, C] uint8; returns the model and its
    history (with per-stage ``timings``)."""
    from hmmlvd.lvd.image import train_patch_lvd

    return train_patch_lvd(train, lvd_config(args), progress=not args.quiet,
                           device=args.device)


# ----- pictures -----------------------------------------------------------------------------
def draw_samples(model, num_samples: int, seed: int) -> np.ndarray:
    """[n, D] samples from a Circuit or a PatchCircuit."""
    drawn = (sample(model, num_samples, seed=seed) if isinstance(model, Circuit)
             else model.sample(num_samples, seed=seed))
    return drawn.cpu().numpy()


def draw_inpaintings(model, x: torch.Tensor, missing: torch.Tensor, seed: int) -> np.ndarray:
    """[B, D] ``x`` [B, D] with its ``missing`` entries drawn from p(missing | observed)."""
    filled = (inpaint(model, x, missing, seed=seed) if isinstance(model, Circuit)
              else model.inpaint(x, missing, seed=seed))
    return filled.cpu().numpy()


def bottom_half(count: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """[count, H*W*C] bool mask of the bottom H - H // 2 rows (HWC order)."""
    height, width, channels = shape
    mask = torch.zeros(count, height, width, channels, dtype=torch.bool)
    mask[:, height // 2:] = True
    return mask.flatten(1)


def as_rgb(pixels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """[n, D] grey levels -> [n, H, W, 3] uint8."""
    images = np.clip(pixels, 0, LEVELS - 1).astype(np.uint8).reshape(-1, *shape)
    return np.repeat(images, 3, axis=-1) if shape[2] == 1 else images


def save_grid(rows: Sequence[np.ndarray], path: Path, title: str,
              labels: Sequence[str] = ()) -> None:
    """Rows of [n, H, W, 3] uint8 images as one picture (1-pixel white gaps), row labels on
    the left."""
    height, width = rows[0].shape[1:3]
    gap = 1
    canvas = np.full((len(rows) * (height + gap) - gap, len(rows[0]) * (width + gap) - gap, 3),
                     255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            canvas[top:top + height, left:left + width] = image
    fig = Figure(figsize=(1.0 + 0.55 * len(rows[0]), 0.4 + 0.55 * len(rows)))
    ax = fig.add_subplot()
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (height + gap) + height / 2 for r in range(len(labels))], labels,
                  fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def save_samples(model, shape: tuple[int, int, int], path: Path, title: str,
                 seed: int = 0) -> None:
    """An 8x8 grid of samples."""
    images = as_rgb(draw_samples(model, SAMPLE_GRID * SAMPLE_GRID, seed), shape)
    save_grid(list(images.reshape(SAMPLE_GRID, SAMPLE_GRID, *images.shape[1:])), path, title)


def save_inpaintings(model, images: np.ndarray, path: Path, title: str, seed: int = 0
                     ) -> None:
    """The bottom half of the first 8 of ``images`` [N, H, W, C] inpainted: rows original,
    masked (missing pixels dark red), then 3 draws from p(bottom | top)."""
    shape = images.shape[1:]
    x = torch.as_tensor(flatten(images[:INPAINT_IMAGES]))
    missing = bottom_half(len(x), shape)
    original = as_rgb(x.numpy(), shape)
    masked = original.copy()
    masked[missing.view(len(x), *shape).any(-1).numpy()] = MASK_COLOUR
    draws = [as_rgb(draw_inpaintings(model, x, missing, seed + i), shape)
             for i in range(INPAINT_DRAWS)]
    labels = ["original", "masked", *(f"draw {i + 1}" for i in range(INPAINT_DRAWS))]
    save_grid([original, masked, *draws], path, title, labels)


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
    load = load_patch_circuit if args.model == "lvd" else load_circuit
    return load(model_folder(args), device=args.device)


def run(args: argparse.Namespace, data: ImageData | None = None) -> tuple[dict, object]:
    """Train, evaluate and record one model (``data``: the loaded dataset, already cut, to
    skip loading it again). Returns the JSON result and the trained model."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_data(args) if data is None else data
    shape = data.shape
    started = time.perf_counter()
    if args.model == "lvd":
        model, history = train_lvd(args, data.train)
        structure = repr(lvd_config(args))
    else:
        model, history = train_baseline(args, data.train, shape)
        structure = structure_note(args, shape, len(data.train))
    train_seconds = time.perf_counter() - started
    model.eval()
    bpd = {split: evaluate_bpd(model.log_likelihood, flatten(data.split(split)),
                               args.batch_size, progress=not args.quiet)
           for split in ("valid", "test")}
    result = {"model": args.model, "size": args.size, "params": model.num_parameters(),
              "train_seconds": train_seconds, "valid_bpd": bpd["valid"],
              "test_bpd": bpd["test"], "command": args.command, "settings": jsonable(args),
              "structure": structure, "summary": model.summary(),
              "dimensions": int(np.prod(shape)), "train_images": len(data.train),
              "valid_images": len(data.valid), "test_images": len(data.test),
              "timings": history["timings"],
              "history": {k: v for k, v in history.items() if k != "timings"},
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    folder = model_folder(args)
    if isinstance(model, Circuit):
        save_circuit(model, folder)
    else:
        save_patch_circuit(model, folder)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{args.dataset} {args.model} K={args.size}: {result['params']:,} parameters, "
          f"trained in {train_seconds:.1f} s on {len(data.train)} images, valid "
          f"{bpd['valid']:.4f} bpd, test {bpd['test']:.4f} bpd (saved in {folder})", flush=True)
    title = f"{args.model.upper()} K={args.size}, {args.dataset}"
    if args.samples is not None:
        save_samples(model, shape, args.samples, f"samples: {title}", args.seed)
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

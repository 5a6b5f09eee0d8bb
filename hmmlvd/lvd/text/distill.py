"""The LVD pipeline for HMMs: suffix embeddings -> k-means labels per position -> closed-form
MLE of the HMM from (tokens, labels). Each stage's wall time is recorded.

Distillation only initialises: EM finetuning is :func:`hmmlvd.hmm.train`'s job, usually on many
more windows than LVD embeds (``hmmlvd lvd --lvd-windows N --max-windows M``): embedding costs
an encoder pass per window, EM a forward pass.

Under torchrun (:mod:`hmmlvd.core.distributed`) each rank embeds its share of the windows into the
shared cache, rank 0 runs k-means (FAISS uses every GPU it sees) and broadcasts the labels,
and every rank fits the same MLE."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hmmlvd.core import distributed
from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import check_count
from hmmlvd.data.vocab import Vocabulary
from hmmlvd.data.windows import TokenWindows
from hmmlvd.hmm import memory
from hmmlvd.hmm.config import HMMConfig
from hmmlvd.hmm.model import HMM, mle_from_labels
from hmmlvd.lvd.cluster import kmeans_labels
from hmmlvd.lvd.text.encoder import Encoder, load_encoder, resolve_encoder_dtype
from hmmlvd.lvd.text.suffix import embed_windows

DEFAULT_LVD_WINDOWS = 50_000  # windows embedded and clustered by default (all, when fewer)
DEFAULT_CACHE = Path(os.environ.get("HMMLVD_CACHE", Path.home() / ".cache" / "hmmlvd"))


@dataclass
class LVDSettings:
    """How latent variable distillation is run (everything but the EM schedule).

    ``encoder``: None for the packaged MiniLM, else a name/path or a loaded :class:`Encoder`;
    ``encoder_dtype``: ``auto`` (default: bfloat16 where the CPU or GPU has native bf16, 2-3x
    faster with suffix embeddings at cosine 0.9999 to float32's; else float32), ``float32`` or
    ``bfloat16`` (see :func:`~hmmlvd.lvd.text.encoder.resolve_encoder_dtype`).
    ``mode``: ``masked`` (one encoder pass per window) or ``exact`` (one per suffix).
    ``kmeans_sample``: train each position's centroids on this many windows (None: all);
    ``kmeans_init``: centroid seeding (k-means++ avoids the local minima of FAISS's random one).
    """

    encoder: str | Encoder | None = None
    encoder_dtype: str = "auto"
    mode: str = "masked"
    cache_dir: Path = DEFAULT_CACHE
    embed_batch_size: int = 64
    kmeans_sample: int | None = None
    kmeans_iters: int = 20
    kmeans_init: str = "kmeans++"
    pseudocount: float = 1e-4  # the MLE init's smoothing, as EM's in the chosen schedule
    seed: int = 0

    def __post_init__(self) -> None:
        check_count(self.embed_batch_size, "--embed-batch-size", "LVDSettings.embed_batch_size")
        check_count(self.kmeans_iters, "--kmeans-iters", "LVDSettings.kmeans_iters")
        if self.kmeans_sample is not None:
            check_count(self.kmeans_sample, "--kmeans-sample", "LVDSettings.kmeans_sample")


@dataclass
class LVDResult:
    """The distilled model (closed-form MLE, before any EM), its labels [N, T] and the seconds of
    each stage (``embed``, ``cluster``, ``mle``)."""

    hmm: HMM
    labels: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)


def embed(windows: TokenWindows, vocab: Vocabulary, settings: LVDSettings,
          device: str | torch.device = "cpu", progress: bool = True) -> np.ndarray:
    """Suffix embeddings [N, T, D] of every window (float16, memory-mapped, cached)."""
    encoder = settings.encoder
    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder, device=device,
                               dtype=resolve_encoder_dtype(settings.encoder_dtype, device))
    return embed_windows(encoder, windows, vocab, settings.cache_dir, mode=settings.mode,
                         batch_size=settings.embed_batch_size, progress=progress)


def run_lvd(windows: TokenWindows, num_states: int, vocab: Vocabulary,
            settings: LVDSettings | None = None, homogeneous: bool = False,
            device: str | torch.device = "cpu", embeddings: np.ndarray | None = None,
            progress: bool = True) -> LVDResult:
    """Embed ``windows`` (the LVD subset, [N, T]), cluster each position's suffix embeddings
    into H labels, and fit the HMM to (tokens, labels) in closed form. ``embeddings`` (from
    :func:`embed`) skips the first stage, so several H can share one embedding pass."""
    settings = settings or LVDSettings()
    if len(windows) < num_states:
        raise DataError(f"H={num_states} hidden states need at least {num_states} windows to "
                        f"cluster, got {len(windows)}")
    config = HMMConfig(num_states, len(vocab), windows.length, homogeneous)
    # before the encoder runs: the MLE counts and EM must fit on the device
    memory.check_model(config, device, "mle", num_windows=len(windows))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if embeddings is None:
        embeddings = embed(windows, vocab, settings, device, progress)
        seconds["embed"] = time.perf_counter() - started
    started = time.perf_counter()
    labels = None
    if distributed.is_main():
        labels = kmeans_labels(embeddings, num_states, sample=settings.kmeans_sample,
                               niter=settings.kmeans_iters, seed=settings.seed,
                               init=settings.kmeans_init, progress=progress)
    labels = distributed.broadcast_array(labels, (len(windows), windows.length), np.int32)
    seconds["cluster"] = time.perf_counter() - started
    started = time.perf_counter()
    hmm = mle_from_labels(windows.as_array(), labels, config, pseudocount=settings.pseudocount,
                          device=device)
    hmm.vocab = vocab
    seconds["mle"] = time.perf_counter() - started
    return LVDResult(hmm=hmm, labels=labels, seconds=seconds)


def distill(windows: TokenWindows, num_states: int, vocab: Vocabulary, **kwargs) -> HMM:
    """Latent variable distillation of an H-state HMM from ``windows``: the closed-form MLE
    initialisation, ready for EM (:func:`hmmlvd.hmm.train`). Keyword arguments are those of
    :func:`run_lvd` (``settings``, ``homogeneous``, ``device``, ...)."""
    return run_lvd(windows, num_states, vocab, **kwargs).hmm


def lvd_subset(stream: np.ndarray, length: int, lvd_windows: int | None = None,
               seed: int = 0) -> TokenWindows:
    """The seeded random subset of ``lvd_windows`` length-T windows of ``stream`` that LVD
    embeds and clusters (None: :data:`DEFAULT_LVD_WINDOWS`, or every window when the stream has
    fewer). Asking for more windows than the stream has, or for 0, is an error naming the
    number available."""
    everything = TokenWindows(stream, length)
    if lvd_windows is None:
        if len(everything) <= DEFAULT_LVD_WINDOWS:
            return everything
        lvd_windows = DEFAULT_LVD_WINDOWS
    if isinstance(lvd_windows, bool) or not isinstance(lvd_windows, int | np.integer):
        raise DataError(f"the number of LVD windows must be an integer, got {lvd_windows!r}")
    if lvd_windows < 1:
        raise DataError(f"the number of LVD windows must be at least 1, got {lvd_windows}")
    if lvd_windows > len(everything):
        raise DataError(f"{lvd_windows:,} LVD windows asked for, but the train stream has only "
                        f"{len(everything):,} windows of length {length}")
    return TokenWindows(stream, length, max_windows=int(lvd_windows), seed=seed)

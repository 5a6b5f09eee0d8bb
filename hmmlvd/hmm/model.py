"""The HMM: parameters, input checks, inference entry points, and save/load.

Parameters are probabilities (float32), kept on one device:

- ``initial``    [H]          p(z_1 = h)
- ``transition`` [P_A, H, H]  transition[t, i, j] = p(z_{t+2} = j | z_{t+1} = i); P_A = T-1
                              (non-homogeneous) or 1 (homogeneous, one matrix for every step)
- ``emission``   [P_B, V, H]  emission[t, w, h] = p(x_{t+1} = w | z_{t+1} = h); P_B = T or 1.
                              Stored word-major (V before H) so the emission column of one
                              token over all states is one contiguous row: gathering a batch's
                              emissions reads B*T rows of H floats. ``emission_matrix(t)`` gives
                              the usual [H, V] view.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from hmmlvd.core.errors import CheckpointError, DataError, ParameterError
from hmmlvd.core.validate import as_id_tensor, check_int
from hmmlvd.data.vocab import Vocabulary
from hmmlvd.data.windows import TokenWindows
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import checkpoint, queries
from hmmlvd.hmm.config import HMMConfig
from hmmlvd.hmm.dfa import DFA
from hmmlvd.hmm.forward import ForwardResult, forward
from hmmlvd.hmm.init import mle_parameters, random_parameters
from hmmlvd.hmm.sample import sample as sample_windows
from hmmlvd.hmm.train import train


class HMM:
    """A hidden Markov model over windows of ``length`` tokens.

    ``HMM(num_states, vocab_size, length=32, homogeneous=False, seed=0)`` draws random
    parameters; pass ``initial``, ``transition`` and ``emission`` to set them instead.

    The sklearn-like verbs ``fit`` / ``score`` / ``log_likelihood`` / ``sample`` (and
    ``save_pretrained`` / ``from_pretrained``) are the same on
    :class:`~hmmlvd.pc.circuit.Circuit` and :class:`~hmmlvd.image.patch_circuit.PatchCircuit`.
    """

    def __init__(self, num_states: int, vocab_size: int, length: int = 32,
                 homogeneous: bool = False, *, initial: torch.Tensor | None = None,
                 transition: torch.Tensor | None = None, emission: torch.Tensor | None = None,
                 seed: int = 0, device: str | torch.device = "cpu",
                 vocab: Vocabulary | None = None):
        self.config = HMMConfig(num_states, vocab_size, length, homogeneous)
        given = [p is not None for p in (initial, transition, emission)]
        if any(given) and not all(given):
            raise ParameterError("pass all of initial, transition and emission, or none")
        if not any(given):
            initial, transition, emission = random_parameters(self.config, seed=seed,
                                                              device=device)
        self.initial = _as_parameter(initial, "initial", device)
        self.transition = _as_parameter(transition, "transition", device)
        self.emission = _as_parameter(emission, "emission", device)
        if vocab is not None and len(vocab) != vocab_size:
            raise DataError(f"vocabulary has {len(vocab)} words but the model has "
                            f"vocab_size={vocab_size}")
        self.vocab = vocab
        self.fit_history: list[float] = []  # mean log-likelihood per epoch of the last fit
        self.valid_history: list[float] = []  # held-out mean log-likelihood per epoch
        self.validate()

    # ----- sizes and placement -------------------------------------------------------------
    @property
    def num_states(self) -> int:
        return self.config.num_states

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def length(self) -> int:
        return self.config.length

    @property
    def homogeneous(self) -> bool:
        return self.config.homogeneous

    @property
    def device(self) -> torch.device:
        return self.initial.device

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters().values())

    def parameters(self) -> dict[str, torch.Tensor]:
        """The three parameter tensors by name."""
        return {"initial": self.initial, "transition": self.transition, "emission": self.emission}

    def to(self, device: str | torch.device) -> HMM:
        """Move the parameters to ``device`` (in place) and return self."""
        self.initial = self.initial.to(device)
        self.transition = self.transition.to(device)
        self.emission = self.emission.to(device)
        return self

    def emission_matrix(self, t: int) -> torch.Tensor:
        """p(x_{t+1} = w | z_{t+1} = h) as an [H, V] view, for position t in 0..T-1."""
        return self.emission[self._emission_position(t)].T

    def transition_matrix(self, t: int) -> torch.Tensor:
        """p(z_{t+2} = j | z_{t+1} = i) as [H, H], for step t in 0..T-2."""
        if not 0 <= t < self.length - 1:
            raise DataError(f"transition step {t} is outside [0, {self.length - 1})")
        return self.transition[0 if self.homogeneous else t]

    def _emission_position(self, t: int) -> int:
        if not 0 <= t < self.length:
            raise DataError(f"position {t} is outside the window [0, {self.length})")
        return 0 if self.homogeneous else t

    # ----- checks --------------------------------------------------------------------------
    def validate(self, tolerance: float = 1e-3) -> None:
        """Raise :class:`ParameterError` unless every parameter has its shape, is finite and
        non-negative, and every distribution sums to 1 (within ``tolerance``)."""
        for name, shape in self.config.shapes().items():
            p = getattr(self, name)
            if tuple(p.shape) != shape:
                raise ParameterError(f"{name} has shape {tuple(p.shape)}, expected {shape} for "
                                     f"{self.config}")
            if not p.numel():
                continue
            # one reduction pass, no temporaries (isfinite would hold ~1.75 copies of p);
            # aminmax propagates NaN
            lo, hi = (v.item() for v in torch.aminmax(p))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ParameterError(f"{name} contains NaN or infinite values")
            if lo < 0:
                raise ParameterError(f"{name} contains negative probabilities")
        sums = {"initial": self.initial.sum(-1), "transition": self.transition.sum(-1),
                "emission": self.emission.sum(-2)}
        for name, s in sums.items():
            err = (s - 1).abs().max().item() if s.numel() else 0.0
            if err > tolerance:
                raise ParameterError(f"{name} distributions do not sum to 1 (largest error "
                                     f"{err:.3g})")

    def check_windows(self, x: torch.Tensor, exact_length: bool = False) -> torch.Tensor:
        """Validate token windows [B, L] (L <= T, or L == T if ``exact_length``) and return them
        as int64 on the model's device. Raises :class:`DataError` naming the problem."""
        x = as_id_tensor(x, "token windows")
        if x.dim() != 2:
            raise DataError(f"token windows must have shape [batch, length], got "
                            f"{tuple(x.shape)}")
        if x.shape[0] == 0:
            raise DataError("no windows given (batch of size 0)")
        if x.shape[1] < 1 or x.shape[1] > self.length:
            raise DataError(f"windows of length {x.shape[1]} do not fit the model's length "
                            f"T={self.length}")
        if exact_length and x.shape[1] != self.length:
            raise DataError(f"windows have length {x.shape[1]}, the model needs T={self.length}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise DataError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        return x.to(device=self.device, dtype=torch.long)

    # ----- inference -----------------------------------------------------------------------
    def gather_emissions(self, x: torch.Tensor) -> torch.Tensor:
        """Emission probabilities of the windows' tokens: x [B, L] -> [B, L, H], laid out so
        that each position's slice [:, t] is contiguous (one row gather from the [P_B*V, H]
        table)."""
        batch, length = x.shape
        rows = x.T  # [L, B]
        if not self.homogeneous:
            rows = rows + torch.arange(length, device=x.device).unsqueeze(1) * self.vocab_size
        table = self.emission.view(-1, self.num_states)
        gathered = table.index_select(0, rows.reshape(-1)).view(length, batch, -1)
        return gathered.transpose(0, 1)

    def transitions_for(self, length: int, transition: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """The per-step transition matrices of an L-token window: [L-1, H, H]."""
        transition = self.transition if transition is None else transition
        if self.homogeneous:
            return transition.expand(max(length - 1, 0), -1, -1)
        if length - 1 == transition.shape[0]:
            return transition  # not a slice: its backward would allocate another full copy
        return transition[: length - 1]

    def run_forward(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> ForwardResult:
        """Forward pass over checked windows x [B, L] (L <= T) starting at position 1, its
        matmuls in ``dtype`` (bfloat16: see :func:`~hmmlvd.hmm.forward.forward`; the
        log-likelihoods are float32 either way)."""
        return self._forward(self.check_windows(x), dtype)

    def _forward(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> ForwardResult:
        """Forward pass over windows already checked by :meth:`check_windows`."""
        return forward(self.initial, self.transitions_for(x.shape[1]).to(dtype),
                       self.gather_emissions(x).to(dtype))

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) of each window: x [B, L] -> [B]. Windows shorter than T are prefixes
        (positions 1..L), marginalising the rest. ``mask`` [B, L] (True = observed): log
        p(x_observed), each missing word marginalised (its emission factor is 1)."""
        if mask is not None:
            return queries.masked_log_likelihood(self, x, mask)
        return self.run_forward(x).log_prefix[:, -1]

    # ----- exact queries (hmmlvd.hmm.queries) ----------------------------------------------
    def predict_proba(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Posteriors p(z_t = h | x_observed): windows [B, L] -> [B, L, H]
        (:func:`~hmmlvd.hmm.queries.posteriors`)."""
        return queries.posteriors(self, x, mask)

    def decode(self, x: torch.Tensor, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Viterbi: the most likely state path [B, L] and its log p(x_observed, path) [B]
        (:func:`~hmmlvd.hmm.queries.viterbi`)."""
        return queries.viterbi(self, x, mask)

    def infill_distribution(self, x: torch.Tensor, mask: torch.Tensor, top_k: int | None = None
                            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """p(x_t = w | x_observed) at every position: [B, L, V], or the ``top_k`` words as
        (probabilities, ids) [B, L, k] (:func:`~hmmlvd.hmm.queries.infill_distribution`)."""
        return queries.infill_distribution(self, x, mask, top_k)

    def infill(self, x: torch.Tensor, mask: torch.Tensor, num_samples: int = 1,
               generator: torch.Generator | None = None, *, seed: int | None = None
               ) -> torch.Tensor:
        """Joint samples of the missing words given the observed ones: [B, L] -> [B, N, L]
        (:func:`~hmmlvd.hmm.queries.infill_samples`)."""
        return queries.infill_samples(self, x, mask, num_samples,
                                      self._generator(generator, seed))

    def constraint_probability(self, dfa: DFA, prefix: torch.Tensor | None = None
                               ) -> torch.Tensor:
        """p(x in L(dfa) | prefix) per prefix row [B] (no prefix: [1], the prior)
        (:func:`~hmmlvd.hmm.queries.constraint_log_probability`)."""
        return queries.constraint_log_probability(self, dfa, prefix).exp()

    def constrained_next_token(self, prefix: torch.Tensor | None, dfa: DFA) -> torch.Tensor:
        """p(x_{L+1} = w | prefix, x in L(dfa)) for every word: [B, V]
        (:func:`~hmmlvd.hmm.queries.constrained_next_token`)."""
        return queries.constrained_next_token(self, prefix, dfa)

    def _generator(self, generator: torch.Generator | None, seed: int | None
                   ) -> torch.Generator | None:
        """``generator``, or a fresh one on the model's device seeded by ``seed``."""
        if seed is None:
            return generator
        if generator is not None:
            raise DataError("give a seed or a generator, not both")
        seed = check_int(seed, "seed", 0)
        return torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def next_token_distribution(self, prefix: torch.Tensor) -> torch.Tensor:
        """p(x_{L+1} = w | x_1..x_L) for prefixes [B, L] with 0 <= L < T -> [B, V].

        An empty prefix (L = 0, shape [B, 0]) gives the marginal of the first token."""
        prefix = as_id_tensor(prefix, "prefix")
        if prefix.dim() == 2 and prefix.shape[1] == 0 and prefix.shape[0] > 0:
            state = self.initial.expand(prefix.shape[0], -1)
        else:
            prefix = self.check_windows(prefix)
            if prefix.shape[1] >= self.length:
                raise DataError(f"prefix of length {prefix.shape[1]} leaves no position to "
                                f"predict in a window of T={self.length}")
            state = self.predictive_states(prefix)
        return state @ self.emission_matrix(prefix.shape[1])

    def predictive_states(self, prefix: torch.Tensor) -> torch.Tensor:
        """p(z_{L+1} | x_1..x_L) for checked prefixes [B, L], 1 <= L < T -> [B, H]; raises
        :class:`DataError` for a prefix the model gives probability 0."""
        result = self._forward(prefix)
        impossible = torch.isneginf(result.log_prefix[:, -1]).nonzero().flatten().tolist()
        if impossible:
            raise DataError(f"prefix rows {impossible[:5]} have probability 0 under the model: "
                            "there is no next-token distribution to condition on")
        return result.alpha @ self.transition_matrix(prefix.shape[1] - 1)

    def sample(self, num_samples: int, prefix: torch.Tensor | None = None,
               generator: torch.Generator | None = None, *, seed: int | None = None,
               constraint: DFA | None = None) -> torch.Tensor:
        """Draw windows [N, T]; with ``prefix`` [L] or [N, L], draw the rest of each window
        from p(x_{L+1..T} | prefix). ``seed``: draw with a generator seeded by it on the
        model's device (instead of ``generator``; the same seed gives the same windows).
        ``constraint``: draw exactly from p(x | x in L(constraint), prefix), never by rejection
        (:func:`~hmmlvd.hmm.queries.constrained_sample`). See :mod:`hmmlvd.hmm.sample`."""
        generator = self._generator(generator, seed)
        if constraint is not None:
            return queries.constrained_sample(self, num_samples, constraint, prefix, generator)
        return sample_windows(self, num_samples, prefix=prefix, generator=generator)

    # ----- sklearn-like verbs (the same on Circuit and PatchCircuit) -----------------------
    def fit(self, data: TokenWindows | torch.Tensor | np.ndarray,
            config: EMConfig | None = None, *, valid: TokenWindows | torch.Tensor |
            np.ndarray | None = None, out: str | os.PathLike | None = None,
            progress: bool = True) -> HMM:
        """Train in place by EM on ``data``, a :class:`~hmmlvd.data.windows.TokenWindows` or
        token windows [N, T], with ``config`` (an :class:`~hmmlvd.em.config.EMConfig`; default
        ``EMConfig()``), checkpointing into ``out`` if given; returns self.
        ``valid``: held-out windows (the same kinds) scored after every epoch: the best
        epoch's parameters are kept and ``config.patience`` stops early, as circuits'
        ``fit(..., valid=...)`` does. ``fit_history`` then holds the mean training
        log-likelihood per window of each epoch (per-token value x T) and ``valid_history``
        the held-out one. See :func:`hmmlvd.hmm.train.train`, which this calls."""
        config = EMConfig() if config is None else config
        data, valid = (None if d is None else d if isinstance(d, TokenWindows)
                       else TokenWindows.from_rows(self.check_windows(d, exact_length=True))
                       for d in (data, valid))
        state = train(self, data, config, out=None if out is None else Path(out),
                      progress=progress, valid=valid)
        self.fit_history = [row["train_ll_per_token"] * self.length for row in state.history]
        self.valid_history = [row["valid_ll_per_window"] for row in state.history
                              if "valid_ll_per_window" in row]
        return self

    @torch.no_grad()
    def score(self, data: TokenWindows | torch.Tensor | np.ndarray, batch_size: int = 1024
              ) -> float:
        """Mean log-likelihood per window, in nats, of ``data`` (a
        :class:`~hmmlvd.data.windows.TokenWindows` or windows [N, L], L <= T): sklearn's
        ``score``, the per-sample average of :meth:`log_likelihood`, higher is better;
        computed in batches of ``batch_size``; -inf if a window has probability zero."""
        batch_size = check_int(batch_size, "batch size", 1)
        if isinstance(data, TokenWindows):
            batches, count = data.batches(batch_size), len(data)
        else:
            data = self.check_windows(data)
            batches, count = data.split(batch_size), len(data)
        total = torch.zeros((), dtype=torch.float64)
        for x in batches:
            total += self.log_likelihood(x).double().sum().cpu()
        return float(total) / count

    # ----- persistence ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors``, ``config.json`` and (if known) ``vocab.txt`` into
        ``directory``, each atomically. See :mod:`hmmlvd.hmm.checkpoint`."""
        checkpoint.save_hmm(self, Path(directory))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        device: str | torch.device = "cpu") -> HMM:
        """Load and check a model written by :meth:`save_pretrained`
        (:class:`~hmmlvd.core.errors.CheckpointError` naming the file if anything is wrong)."""
        directory = Path(directory)
        config, tensors, vocab, raw = checkpoint.read_hmm(directory, device)
        try:
            hmm = cls(config.num_states, config.vocab_size, config.length, config.homogeneous,
                      device=device, vocab=vocab, **tensors)
        except (ParameterError, DataError) as exc:
            raise CheckpointError(f"{directory}: {exc}") from exc
        checkpoint.check_vocab_digest(raw.get("vocab_sha256"), vocab, directory)
        return hmm

    def __repr__(self) -> str:
        c = self.config
        return (f"HMM(num_states={c.num_states}, vocab_size={c.vocab_size}, length={c.length}, "
                f"homogeneous={c.homogeneous}, device={self.device})")


def mle_from_labels(tokens: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                    config: HMMConfig, pseudocount: float = 1e-3, chunk_size: int = 65536,
                    device: str | torch.device = "cpu") -> HMM:
    """The closed-form maximum-likelihood HMM of windows x [N, T] labelled with hidden states
    z [N, T] (the initialiser latent variable distillation feeds):

    initial[h] ∝ #(z_1 = h) + c,   transition[t, i, j] ∝ #(z_t = i, z_{t+1} = j) + c,
    emission[t, w, h] ∝ #(z_t = h, x_t = w) + c    (c = ``pseudocount``; see
    :func:`hmmlvd.hmm.init.mle_parameters`, which counts in chunks of ``chunk_size``)."""
    initial, transition, emission = mle_parameters(tokens, labels, config, pseudocount,
                                                   chunk_size, device)
    return HMM(config.num_states, config.vocab_size, config.length, config.homogeneous,
               device=device, initial=initial, transition=transition, emission=emission)


def _as_parameter(value: object, name: str, device: str | torch.device) -> torch.Tensor:
    """A parameter given as a tensor, array or nested list, as float32 on ``device``."""
    try:  # a tensor stays where it is until .to(device), whatever torch's default device
        tensor = (value.to(dtype=torch.float32) if isinstance(value, torch.Tensor)
                  else torch.as_tensor(value, dtype=torch.float32, device="cpu"))
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ParameterError(f"{name} must be a numeric array ({exc})") from exc
    return tensor.to(device)

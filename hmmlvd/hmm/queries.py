"""Exact queries on an HMM, each the one scaled forward (:func:`~hmmlvd.hmm.forward.forward`)
with another emission factor or state space (the math is in ``DESIGN.md``, "Exact queries").

Windows x [B, L] (L <= T) with an optional ``mask`` [B, L] (True = observed). A missing word's
emission factor is ``sum_w B_t[h, w] = 1``, so:

- :func:`masked_log_likelihood`: log p(x_observed) = the forward with a column of ones there.
- :func:`posteriors`: p(z_t = h | x_observed) = ``e_t(h) * d log p / d e_t(h)`` by autograd
  of that forward (exactly how EM takes its counts).
- :func:`viterbi`: argmax_z p(z, x_observed) by max-product in log space, with backpointers.
- :func:`infill_distribution`: p(x_t = w | x_observed) = sum_h p(z_t = h | x_obs) B_t[h, w].
- :func:`infill_samples`: joint samples of every missing word by forward filtering, backward
  sampling: z_L ~ p(z_L | x_obs), z_t ~ p(z_t | x_obs,<=t) A_t(z_t, z_{t+1}), then
  x_t ~ B_t[z_t, .] at each missing t.

Constraints (:class:`~hmmlvd.hmm.dfa.DFA`) run over the product chain of states (q, h):
``E_t[q, q', h] = sum_{w: delta(q, w) = q'} B_t[h, w]``, built from the DFA's few explicit
edges plus ``1 - sum`` of them for its default edge, so a step costs one [B*Q, H] @ [H, H]
matmul plus O(B Q^2 H), never O(Q V H):

- :func:`constraint_log_probability`: log p(x in L | prefix) (forward over (q, h)).
- :func:`constrained_sample`: exact samples of p(x | x in L, prefix) (a backward over (q, h)
  of "ends accepting", then forward sampling of (z_t, x_t) pairs; no rejection).
- :func:`constrained_next_token`: p(x_{L+1} = w | prefix, x in L) for every w, GeLaTo's factor.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from hmmlvd.core.errors import DataError
from hmmlvd.core.validate import as_id_tensor, check_int
from hmmlvd.hmm.dfa import DFA
from hmmlvd.hmm.forward import ForwardResult, forward

if TYPE_CHECKING:  # the HMM's verbs call this module; no runtime import of it here
    from hmmlvd.hmm.model import HMM

#: Viterbi works on chunks of windows whose [chunk, H, H] score tensor has at most this many
#: entries (128 MiB of float32).
VITERBI_ENTRIES = 2**25


# ----- inputs ---------------------------------------------------------------------------------
def windows_and_mask(hmm: HMM, x: torch.Tensor, mask: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Checked windows [B, L] (a single window [L] becomes [1, L]) and mask [B, L] (bool, on the
    model's device; None = all observed). Words at missing positions are ignored (any id, e.g.
    -1, may stand there)."""
    x = as_id_tensor(x, "token windows")
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if mask is None:
        return hmm.check_windows(x), None
    mask = torch.as_tensor(mask, device=x.device)
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if mask.shape != x.shape:
        raise DataError(f"mask has shape {tuple(mask.shape)} but the windows have "
                        f"{tuple(x.shape)}")
    if mask.dtype != torch.bool:
        raise DataError(f"mask must be boolean (True = observed), got {mask.dtype}")
    x = hmm.check_windows(torch.where(mask, x, 0))
    return x, mask.to(hmm.device)


def emission_factors(hmm: HMM, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """e_t(h) for checked windows [B, L]: B_t[h, x_t] where observed, 1 where missing ->
    [B, L, H]."""
    gathered = hmm.gather_emissions(x)  # a fresh tensor: filled in place
    if mask is None:
        return gathered
    return gathered.masked_fill_(~mask.unsqueeze(-1), 1.0)


def _forward(hmm: HMM, factors: torch.Tensor, **kwargs: bool) -> ForwardResult:
    return forward(hmm.initial, hmm.transitions_for(factors.shape[1]), factors, **kwargs)


def _possible(log_p: torch.Tensor, what: str) -> None:
    bad = torch.isneginf(log_p).nonzero().flatten().tolist()
    if bad:
        raise DataError(f"{what} {bad[:5]} have probability 0 under the model: there is no "
                        "posterior to condition on")


# ----- posteriors, likelihood, decoding ------------------------------------------------------
@torch.no_grad()
def masked_log_likelihood(hmm: HMM, x: torch.Tensor, mask: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """log p(x_observed) of each window [B, L] -> [B] (float32; -inf if impossible)."""
    x, mask = windows_and_mask(hmm, x, mask)
    return _forward(hmm, emission_factors(hmm, x, mask)).log_prefix[:, -1]


def posteriors(hmm: HMM, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """p(z_t = h | x_observed) for windows [B, L] -> [B, L, H] (each [b, t] sums to 1).
    Raises :class:`DataError` for a window of probability 0."""
    x, mask = windows_and_mask(hmm, x, mask)
    factors = emission_factors(hmm, x, mask).detach().requires_grad_()
    with torch.enable_grad():
        log_p = _forward(hmm, factors, prefix_grads=False).log_prefix[:, -1]
        _possible(log_p.detach(), "windows")
        (grad,) = torch.autograd.grad(log_p.sum(), factors)
    return (factors.detach() * grad).clamp_min_(0.0)


@torch.no_grad()
def viterbi(hmm: HMM, x: torch.Tensor, mask: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely state path of each window and its log joint: windows [B, L] ->
    (paths [B, L] int64, log p(x_observed, path) [B] float32).

    delta_1(h) = log pi(h) + log e_1(h); delta_t(j) = max_i [delta_{t-1}(i) + log A(i, j)] +
    log e_t(j), keeping the argmax i; the path is read back from argmax_h delta_L(h). Ties go to
    the lowest state index. Runs in chunks of windows so that the [chunk, H, H] scores stay
    within :data:`VITERBI_ENTRIES`. A window of probability 0 gets log p = -inf."""
    x, mask = windows_and_mask(hmm, x, mask)
    chunk = max(1, VITERBI_ENTRIES // hmm.num_states**2)
    paths, scores = [], []
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk]
        part_mask = None if mask is None else mask[start:start + chunk]
        path, score = _viterbi_chunk(hmm, emission_factors(hmm, part, part_mask))
        paths.append(path)
        scores.append(score)
    return torch.cat(paths), torch.cat(scores)


def _viterbi_chunk(hmm: HMM, factors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length, _ = factors.shape
    log_e = factors.log()  # -inf where a state cannot emit the word
    log_a = hmm.transitions_for(length).log()
    delta = hmm.initial.log() + log_e[:, 0]  # [B, H]
    back = []
    for t in range(1, length):
        best, arg = (delta.unsqueeze(2) + log_a[t - 1]).max(dim=1)  # over the previous state
        delta = best + log_e[:, t]
        back.append(arg)
    score, state = delta.max(dim=-1)
    path = torch.empty(batch, length, dtype=torch.long, device=factors.device)
    path[:, -1] = state
    for t in range(length - 2, -1, -1):
        state = back[t].gather(1, state.unsqueeze(1)).squeeze(1)
        path[:, t] = state
    return path, score


# ----- infill ---------------------------------------------------------------------------------
def infill_distribution(hmm: HMM, x: torch.Tensor, mask: torch.Tensor,
                        top_k: int | None = None
                        ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """p(x_t = w | x_observed) at every position of windows [B, L] -> [B, L, V] (observed
    positions: one-hot on their word). ``top_k``: only the k most likely words per position,
    as (probabilities [B, L, k], word ids [B, L, k]), never holding [B, L, V] at once."""
    x, mask = windows_and_mask(hmm, x, mask)
    if mask is None:
        raise DataError("infill needs a mask marking the missing words (False)")
    if top_k is not None:
        top_k = check_int(top_k, "top_k", 1)
        top_k = min(top_k, hmm.vocab_size)
    post = posteriors(hmm, x, mask)  # [B, L, H]
    dists, values, indices = [], [], []
    for t in range(x.shape[1]):
        probs = post[:, t] @ hmm.emission_matrix(t)  # [B, V]
        observed = mask[:, t]
        if observed.any():
            probs[observed] = 0.0
            probs[observed, x[observed, t]] = 1.0
        if top_k is None:
            dists.append(probs)
        else:
            top = probs.topk(top_k, dim=-1)
            values.append(top.values)
            indices.append(top.indices)
    if top_k is None:
        return torch.stack(dists, dim=1)
    return torch.stack(values, dim=1), torch.stack(indices, dim=1)


@torch.no_grad()
def infill_samples(hmm: HMM, x: torch.Tensor, mask: torch.Tensor, num_samples: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_samples`` joint draws of the missing words of each window given its observed
    ones: windows [B, L] -> [B, N, L] (observed positions copied). Forward filtering, backward
    sampling (see the module docstring): exact samples of p(x_missing | x_observed)."""
    num_samples = check_int(num_samples, "num_samples", 1)
    x, mask = windows_and_mask(hmm, x, mask)
    if mask is None:
        raise DataError("infill needs a mask marking the missing words (False)")
    result = _forward(hmm, emission_factors(hmm, x, mask), states=True)
    _possible(result.log_prefix[:, -1], "windows")
    batch, length = x.shape
    filtered = result.states.repeat_interleave(num_samples, dim=0)  # [B*N, L, H]
    z = torch.multinomial(filtered[:, -1], 1, generator=generator).squeeze(1)
    states = [z]
    for t in range(length - 2, -1, -1):
        weights = filtered[:, t] * hmm.transition_matrix(t)[:, z].T  # [B*N, H]
        z = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        states.append(z)
    states.reverse()
    out = x.repeat_interleave(num_samples, dim=0)
    missing = ~mask.repeat_interleave(num_samples, dim=0)
    for t in range(length):
        rows = missing[:, t].nonzero().flatten()
        if len(rows):
            words = hmm.emission_matrix(t)[states[t][rows]]  # [n, V]
            out[rows, t] = torch.multinomial(words, 1, generator=generator).squeeze(1)
    return out.view(batch, num_samples, length)


# ----- constraints ----------------------------------------------------------------------------
def edge_factors(hmm: HMM, dfa: DFA) -> torch.Tensor:
    """E_t[q, q', h] = sum over words w with delta(q, w) = q' of B_t[h, w] at every stored
    emission position -> [P_B, Q, Q, H] (index it with :func:`position`): the DFA's explicit
    edges, and for each q's default edge the rest of the mass, 1 - sum of its explicit words'
    probabilities. Built once per query, for all positions at a time."""
    positions, q, h = hmm.config.emission_positions, dfa.num_states, hmm.num_states
    factors = torch.zeros(q, q, positions, h, device=hmm.device)
    leaving = torch.zeros(q, positions, h, device=hmm.device)
    if dfa.edges:
        src, words, dst = (torch.tensor(col, device=hmm.device) for col in zip(*dfa.edges,
                                                                              strict=True))
        rows = hmm.emission.index_select(1, words).transpose(0, 1)  # [E, P_B, H]
        factors.index_put_((src, dst), rows, accumulate=True)
        leaving.index_add_(0, src, rows)
    states = torch.arange(q, device=hmm.device)
    default = torch.tensor(dfa.default, device=hmm.device)
    factors.index_put_((states, default), (1.0 - leaving).clamp_min_(0.0), accumulate=True)
    return factors.permute(2, 0, 1, 3).contiguous()


def position(hmm: HMM, t: int) -> int:
    """The stored emission position of window position t (0 for a homogeneous model)."""
    return hmm._emission_position(t)


def _check_constraint(hmm: HMM, dfa: DFA) -> None:
    if not isinstance(dfa, DFA):
        raise DataError(f"a constraint must be a DFA, got {type(dfa).__name__}")
    dfa.check_vocabulary(hmm.vocab_size)


def _prefix(hmm: HMM, prefix: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
    """A prefix [L] or [B, L] as checked [B, L] (L = 0 allowed; at most T - 1 words, so that
    a position is left to generate)."""
    if prefix is None:
        return torch.zeros(rows or 1, 0, dtype=torch.long, device=hmm.device)
    prefix = as_id_tensor(prefix, "prefix")
    if prefix.dim() == 1:
        prefix = prefix.unsqueeze(0)
    if prefix.dim() != 2:
        raise DataError(f"prefix must have shape [L] or [B, L], got {tuple(prefix.shape)}")
    if rows is not None and prefix.shape[0] == 1:
        prefix = prefix.expand(rows, -1)
    if rows is not None and prefix.shape[0] != rows:
        raise DataError(f"prefix has {prefix.shape[0]} rows but {rows} samples were asked for")
    if prefix.shape[1] >= hmm.length:
        raise DataError(f"a prefix of {prefix.shape[1]} words leaves nothing to generate in a "
                        f"window of T={hmm.length}")
    if prefix.shape[1] == 0:
        return prefix.to(hmm.device)
    return hmm.check_windows(prefix)


def dfa_states(dfa: DFA, prefix: torch.Tensor) -> torch.Tensor:
    """The DFA's state after reading each prefix row [B, L] -> [B] (the start for L = 0)."""
    q = torch.full((prefix.shape[0],), dfa.start, dtype=torch.long, device=prefix.device)
    for t in range(prefix.shape[1]):
        q = dfa.next_states(prefix[:, t]).gather(1, q.unsqueeze(1)).squeeze(1)
    return q


@torch.no_grad()
def constraint_log_probability(hmm: HMM, dfa: DFA, prefix: torch.Tensor | None = None
                               ) -> torch.Tensor:
    """log p(x in L | x_1..x_L = prefix) for each prefix row -> [B] (no prefix: [1], the
    prior log p(x in L)); -inf when the constraint cannot hold. The forward over (q, h):
    prefix words move q deterministically, free positions through ``E_t``."""
    _check_constraint(hmm, dfa)
    prefix = _prefix(hmm, prefix)
    batch, given = prefix.shape
    q, h = dfa.num_states, hmm.num_states
    accept = dfa.accepting_mask(hmm.device)
    table = edge_factors(hmm, dfa)
    tiny = torch.finfo(torch.float32).tiny
    log_total = torch.zeros(batch, device=hmm.device)
    log_given = torch.zeros(batch, device=hmm.device)
    alpha = None
    for t in range(hmm.length):
        if t == 0:
            pred = torch.zeros(batch, q, h, device=hmm.device)
            pred[:, dfa.start] = hmm.initial
        else:
            pred = alpha @ hmm.transition_matrix(t - 1)  # [B, Q, H]
        if t < given:
            words = prefix[:, t]
            nxt = dfa.next_states(words)  # [B, Q]
            emit = hmm.emission[hmm._emission_position(t)].index_select(0, words)  # [B, H]
            alpha = torch.zeros_like(pred).scatter_add_(
                1, nxt.unsqueeze(-1).expand(-1, -1, h), pred * emit.unsqueeze(1))
        else:
            alpha = torch.einsum("bph,pqh->bqh", pred, table[position(hmm, t)])
        norm = alpha.sum(dim=(1, 2))
        alpha = alpha / norm.clamp_min(tiny).view(-1, 1, 1)
        log_total += norm.log()
        if t < given:
            log_given += norm.log()
    accepted = (alpha * accept.view(1, -1, 1)).sum(dim=(1, 2))
    return torch.where(torch.isneginf(log_given), -math.inf,
                       log_total + accepted.log() - log_given)


def constraint_backward(hmm: HMM, dfa: DFA, table: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """beta_t(q, h) = p(the words after position t take q into F | z_t = h, q_t = q), each
    position scaled by its maximum (sampling needs only ratios within a position) ->
    [T, Q, H]. beta_T(q, h) = 1[q in F]; beta_t = (sum_q' E_{t+1}[q, q', .] beta_{t+1}(q', .))
    @ A_t^T."""
    table = edge_factors(hmm, dfa) if table is None else table
    beta = torch.empty(hmm.length, dfa.num_states, hmm.num_states, device=hmm.device)
    beta[-1] = dfa.accepting_mask(hmm.device).unsqueeze(1)
    for t in range(hmm.length - 2, -1, -1):
        ahead = torch.einsum("pqh,qh->ph", table[position(hmm, t + 1)], beta[t + 1])
        step = ahead @ hmm.transition_matrix(t).T  # [Q, H]
        beta[t] = step / step.max().clamp_min(torch.finfo(torch.float32).tiny)
    return beta


def _state_prior(hmm: HMM, prefix: torch.Tensor) -> torch.Tensor:
    """p(z_{L+1} | prefix) for prefixes [B, L] -> [B, H] (the initial distribution for L = 0)."""
    if prefix.shape[1] == 0:
        return hmm.initial.expand(prefix.shape[0], -1)
    return hmm.predictive_states(prefix)


def _word_weights(hmm: HMM, dfa: DFA, beta_t: torch.Tensor, t: int, state_weights: torch.Tensor,
                  q: torch.Tensor) -> torch.Tensor:
    """sum_h s[b, h] B_t[h, w] beta_t(delta(q_b, w), h) for every word -> [B, V]: the default
    edge's weight for all words, then the few explicit edges out of q_b overwritten."""
    emission = hmm.emission[hmm._emission_position(t)]  # [V, H]
    default = torch.tensor(dfa.default, device=hmm.device)[q]  # [B]
    weights = (state_weights * beta_t[default]) @ emission.T  # [B, V]
    for src, word, dst in dfa.edges:
        rows = (q == src).nonzero().flatten()
        if len(rows):
            weights[rows, word] = (state_weights[rows] * beta_t[dst]) @ emission[word]
    return weights


@torch.no_grad()
def constrained_next_token(hmm: HMM, prefix: torch.Tensor | None, dfa: DFA) -> torch.Tensor:
    """p(x_{L+1} = w | x_1..x_L = prefix, x in L) for every word: prefixes [L] or [B, L]
    (0 <= L < T) -> [B, V]; ∝ p(w | prefix) p(x in L | prefix, w). Raises
    :class:`DataError` for a prefix under which the constraint has probability 0."""
    _check_constraint(hmm, dfa)
    prefix = _prefix(hmm, prefix)
    t = prefix.shape[1]
    beta = constraint_backward(hmm, dfa)
    weights = _word_weights(hmm, dfa, beta[t], t, _state_prior(hmm, prefix),
                            dfa_states(dfa, prefix))
    total = weights.sum(dim=-1, keepdim=True)
    impossible = (total.squeeze(-1) <= 0).nonzero().flatten().tolist()
    if impossible:
        raise DataError(f"the constraint has probability 0 under the model given prefix rows "
                        f"{impossible[:5]}: no continuation satisfies it")
    return weights / total


@torch.no_grad()
def constrained_sample(hmm: HMM, num_samples: int, dfa: DFA,
                       prefix: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_samples`` windows [N, T] drawn exactly from p(x | x in L, x_1..x_L = prefix):
    z_t ~ A(z_{t-1}, .) * sum_q' E_t[q_{t-1}, q', .] beta_t(q', .), then
    x_t ~ B_t[z_t, .] beta_t(delta(q_{t-1}, .), z_t) (see :func:`constraint_backward`).
    Raises :class:`DataError` when the constraint has probability 0 (given the prefix)."""
    num_samples = check_int(num_samples, "num_samples", 1)
    _check_constraint(hmm, dfa)
    prefix = _prefix(hmm, prefix, rows=num_samples)
    start = prefix.shape[1]
    table = edge_factors(hmm, dfa)
    beta = constraint_backward(hmm, dfa, table)
    out = torch.empty(num_samples, hmm.length, dtype=torch.long, device=hmm.device)
    out[:, :start] = prefix
    q = dfa_states(dfa, prefix)
    z = None
    for t in range(start, hmm.length):
        ahead = torch.einsum("pqh,qh->ph", table[position(hmm, t)], beta[t])  # [Q, H]
        prior = _state_prior(hmm, prefix) if t == start else hmm.transition_matrix(t - 1)[z]
        state_weights = prior * ahead[q]  # [N, H]
        possible = state_weights.sum(dim=-1) > 0
        if not bool(possible.all()):
            rows = (~possible).nonzero().flatten().tolist()
            raise DataError(f"the constraint has probability 0 under the model (samples "
                            f"{rows[:5]}): there is nothing to sample")
        z = torch.multinomial(state_weights, 1, generator=generator).squeeze(1)
        one_hot = torch.zeros_like(state_weights).scatter_(1, z.unsqueeze(1), 1.0)
        words = _word_weights(hmm, dfa, beta[t], t, one_hot, q)  # [N, V]
        out[:, t] = torch.multinomial(words, 1, generator=generator).squeeze(1)
        q = dfa.next_states(out[:, t]).gather(1, q.unsqueeze(1)).squeeze(1)
    return out

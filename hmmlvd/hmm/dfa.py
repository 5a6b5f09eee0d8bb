"""Deterministic finite automata over word ids: the constraints that the HMM's exact queries
condition on (:mod:`hmmlvd.hmm.queries`).

A :class:`DFA` keeps only its explicit edges ``(q, w) -> q'`` plus one ``default`` edge per
state taken by every other word, so a keyword or banned-word constraint costs O(|Q| + edges)
to store and to multiply into the HMM, never O(|Q| * V). Builders: :func:`keywords` (the window
contains every keyword, in any order or in the given order) and :func:`banned` (it contains none
of the words); :meth:`DFA.intersect` combines two constraints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from hmmlvd.core.errors import DataError


@dataclass(frozen=True)
class DFA:
    """An automaton with states 0..Q-1 over words 0..V-1.

    ``start``: q0. ``accepting``: the states F that accept. ``edges``: explicit transitions
    ``(q, w, q')``, at most one per (q, w). ``default`` [Q]: the state that every word without
    an explicit edge from q leads to. A word sequence is in the language when the run from q0
    ends in F.
    """

    num_states: int
    start: int
    accepting: frozenset[int]
    edges: tuple[tuple[int, int, int], ...]
    default: tuple[int, ...]

    def __post_init__(self) -> None:
        q = self.num_states
        if isinstance(q, bool) or not isinstance(q, int) or q < 1:
            raise DataError(f"a DFA needs at least one state, got num_states={q!r}")
        if len(self.default) != q:
            raise DataError(f"default must name one next state for each of the {q} states, "
                            f"got {len(self.default)}")
        states = [self.start, *self.accepting, *self.default,
                  *(s for a, _, b in self.edges for s in (a, b))]
        bad = next((s for s in states if not 0 <= s < q), None)
        if bad is not None:
            raise DataError(f"DFA state {bad} is outside 0..{q - 1}")
        if any(w < 0 for _, w, _ in self.edges):
            raise DataError("DFA edges need word ids >= 0")
        seen = set()
        for a, w, _ in self.edges:
            if (a, w) in seen:
                raise DataError(f"the DFA has two edges from state {a} on word {w}: it must be "
                                "deterministic")
            seen.add((a, w))

    # ----- reading it -------------------------------------------------------------------------
    def step(self, state: int, word: int) -> int:
        """delta(state, word)."""
        for a, w, b in self.edges:
            if a == state and w == word:
                return b
        return self.default[state]

    def accepts(self, words: Iterable[int]) -> bool:
        """Whether the run over ``words`` from the start ends in an accepting state."""
        state = self.start
        for w in words:
            state = self.step(state, int(w))
        return state in self.accepting

    def words(self) -> list[int]:
        """The word ids that have an explicit edge somewhere (all others act alike)."""
        return sorted({w for _, w, _ in self.edges})

    def check_vocabulary(self, vocab_size: int) -> None:
        """:class:`DataError` when an edge names a word outside 0..V-1."""
        bad = next((w for _, w, _ in self.edges if w >= vocab_size), None)
        if bad is not None:
            raise DataError(f"the constraint names word id {bad}, outside the model's "
                            f"vocabulary of {vocab_size} words")

    def next_states(self, words: torch.Tensor) -> torch.Tensor:
        """delta(q, w_b) for every state q and word w_b: words [B] -> [B, Q] (int64)."""
        out = torch.tensor(self.default, dtype=torch.long, device=words.device)
        out = out.expand(len(words), -1).clone()
        for a, w, b in self.edges:
            out[words == w, a] = b
        return out

    def accepting_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[Q] float: 1 for accepting states."""
        mask = torch.zeros(self.num_states, device=device)
        mask[list(self.accepting)] = 1.0
        return mask

    # ----- combining --------------------------------------------------------------------------
    def intersect(self, other: DFA) -> DFA:
        """The product automaton: a sequence is accepted when both accept it."""
        q2 = other.num_states
        words = sorted(set(self.words()) | set(other.words()))
        edges = []
        for a in range(self.num_states):
            for b in range(q2):
                for w in words:
                    target = self.step(a, w) * q2 + other.step(b, w)
                    if target != self.default[a] * q2 + other.default[b]:
                        edges.append((a * q2 + b, w, target))
        default = tuple(self.default[a] * q2 + other.default[b]
                        for a in range(self.num_states) for b in range(q2))
        accepting = frozenset(a * q2 + b for a in self.accepting for b in other.accepting)
        return DFA(self.num_states * q2, self.start * q2 + other.start, accepting,
                   tuple(edges), default)


def keywords(words: Sequence[int], ordered: bool = False) -> DFA:
    """Windows that contain every word of ``words`` (word ids). Unordered: 2^m states, one per
    subset of keywords seen so far; ``ordered``: m + 1 states, the number of keywords seen in
    the given order (each keyword after the previous one; other words in between are free)."""
    words = [int(w) for w in words]
    if not words:
        raise DataError("keywords() needs at least one keyword")
    if ordered:
        m = len(words)
        edges = tuple((i, words[i], i + 1) for i in range(m))
        return DFA(m + 1, 0, frozenset({m}), edges, tuple(range(m + 1)))
    unique = sorted(set(words))
    m = len(unique)
    edges = tuple((s, w, s | (1 << i)) for s in range(2**m) for i, w in enumerate(unique)
                  if not s & (1 << i))
    return DFA(2**m, 0, frozenset({2**m - 1}), edges, tuple(range(2**m)))


def banned(words: Sequence[int]) -> DFA:
    """Windows that contain none of ``words``: state 0 while clean, 1 (a trap) after any."""
    words = sorted({int(w) for w in words})
    if not words:
        raise DataError("banned() needs at least one word")
    return DFA(2, 0, frozenset({0}), tuple((0, w, 1) for w in words), (0, 1))

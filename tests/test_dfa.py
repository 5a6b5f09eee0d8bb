"""Constraint automata (hmmlvd.hmm.dfa) on their own: the builders and the product accept
exactly the word sequences they describe (checked against plain Python predicates over every
sequence of a small alphabet), stay compact, and bad automata are refused with a message naming
the problem."""

from __future__ import annotations

import itertools

import pytest
import torch

from hmmlvd.core.errors import HMMLVDError
from hmmlvd.hmm.dfa import DFA, banned, keywords

SEQUENCES = list(itertools.product(range(5), repeat=4))

# name -> (a builder of the automaton, the language as a predicate on a sequence); built inside
# each test, so that a builder's failure is that test's failure.
LANGUAGES = {
    "keywords 1 3": (lambda: keywords([1, 3]), lambda s: 1 in s and 3 in s),
    "keywords 0 2 4": (lambda: keywords([4, 0, 2]), lambda s: {0, 2, 4} <= set(s)),
    "ordered 3 1": (lambda: keywords([3, 1], ordered=True),
                    lambda s: any(s[i] == 3 and 1 in s[i + 1:] for i in range(len(s)))),
    "banned 0 2": (lambda: banned([2, 0]), lambda s: 0 not in s and 2 not in s),
    # one that does not start in state 0: the state after a 4 (so the empty sequence is refused)
    "not last 4": (lambda: DFA(2, 1, frozenset({0}),
                               ((0, 4, 1), (1, 0, 0), (1, 1, 0), (1, 2, 0), (1, 3, 0)), (0, 1)),
                   lambda s: bool(s) and s[-1] != 4),
}


def compact(dfa: DFA) -> bool:
    """No explicit edge repeats its state's default edge (the automaton stores only the edges it
    needs, so a query costs O(|Q| + edges))."""
    return all(dst != dfa.default[src] for src, _, dst in dfa.edges)


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_builders_accept_their_language_and_stay_compact(name):
    build, member = LANGUAGES[name]
    dfa = build()
    for seq in SEQUENCES:
        assert dfa.accepts(seq) == member(seq), seq
    assert dfa.accepts(()) == member(())
    assert compact(dfa)


def test_keywords_need_one_state_per_subset_or_per_position():
    assert keywords([4, 0, 2]).num_states == 8
    assert keywords([4, 0, 2], ordered=True).num_states == 4
    assert len(keywords([4, 0, 2]).edges) == 3 * 4  # each keyword from the 4 subsets without it


@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(LANGUAGES, 2)))
def test_intersection_accepts_what_both_accept(first, second):
    build_a, in_a = LANGUAGES[first]
    build_b, in_b = LANGUAGES[second]
    a, b = build_a(), build_b()
    both = a.intersect(b)
    assert both.num_states == a.num_states * b.num_states
    for seq in SEQUENCES:
        assert both.accepts(seq) == (in_a(seq) and in_b(seq)), seq
    assert both.accepts(()) == (in_a(()) and in_b(()))
    assert compact(both)


def test_accepting_mask_marks_the_accepting_states():
    assert torch.equal(keywords([1, 3]).accepting_mask(), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert torch.equal(banned([1]).accepting_mask("cpu"), torch.tensor([1.0, 0.0]))


def test_a_one_state_automaton_accepts_everything():
    everything = DFA(1, 0, frozenset({0}), ((0, 2, 0),), (0,))
    assert all(everything.accepts(seq) for seq in SEQUENCES[:50])


@pytest.mark.parametrize(("build", "message"), [
    (lambda: DFA(0, 0, frozenset(), (), ()), "a DFA needs at least one state, got num_states=0"),
    (lambda: DFA(True, 0, frozenset({0}), (), (0,)),
     "a DFA needs at least one state, got num_states=True"),
    (lambda: DFA(2.0, 0, frozenset({0}), (), (0, 1)),
     "a DFA needs at least one state, got num_states=2.0"),
    (lambda: DFA(2, 0, frozenset({0}), (), (0,)),
     "default must name one next state for each of the 2 states, got 1"),
    (lambda: DFA(2, 0, frozenset({2}), (), (0, 1)), r"DFA state 2 is outside 0\.\.1"),
    (lambda: DFA(2, 0, frozenset({0}), ((0, -1, 1),), (0, 1)), "DFA edges need word ids >= 0"),
    (lambda: DFA(2, 0, frozenset({1}), ((0, 1, 1), (0, 1, 0)), (0, 1)),
     "two edges from state 0 on word 1: it must be deterministic"),
    (lambda: keywords([]), r"keywords\(\) needs at least one keyword"),
    (lambda: banned([]), r"banned\(\) needs at least one word"),
])
def test_bad_automata_are_refused_naming_the_problem(build, message):
    with pytest.raises(HMMLVDError, match=message):
        build()

"""Non-homogeneous hidden Markov models over token windows.

Modules, each above the ones it imports: ``config`` (sizes) -> ``forward`` (the scaled forward
algorithm), ``memory`` (what training and sampling need) -> ``init`` (random and closed-form MLE
parameters), ``checkpoint`` (folders), ``em`` (expected counts by autograd, in chunks and a
compute dtype; M-step), ``parallel`` (their data-parallel reductions), ``sample`` -> ``train``
(the EM loop), ``dfa`` (constraints) -> ``queries`` (posteriors, Viterbi, masked likelihood,
infill, constrained probability, sampling and next token) -> ``model`` (:class:`HMM` and its
verbs) -> ``eval`` (perplexities), ``resume`` (loading a training checkpoint)."""

from hmmlvd.hmm.config import HMMConfig
from hmmlvd.hmm.em import CountAccumulator, ExpectedCounts, expected_counts, maximize
from hmmlvd.hmm.eval import (
    Perplexity,
    sliding_perplexity,
    sliding_token_log_probs,
    window_perplexity,
)
from hmmlvd.hmm.forward import ForwardResult, forward
from hmmlvd.hmm.init import mle_parameters, random_parameters
from hmmlvd.hmm.model import HMM, mle_from_labels
from hmmlvd.hmm.resume import load_checkpoint
from hmmlvd.hmm.sample import sample
from hmmlvd.hmm.train import TrainingInterrupted, train

__all__ = ["HMM", "CountAccumulator", "ExpectedCounts", "ForwardResult", "HMMConfig",
           "Perplexity", "TrainingInterrupted",
           "expected_counts", "forward", "load_checkpoint", "maximize", "mle_from_labels",
           "mle_parameters", "random_parameters", "sample",
           "sliding_perplexity", "sliding_token_log_probs", "train", "window_perplexity"]

"""Non-homogeneous hidden Markov models over token windows: parameters, forward algorithm,
EM by autograd, initialisers, evaluation, sampling, checkpoints and training."""

from hmmlvd.hmm.em import CountAccumulator, ExpectedCounts, expected_counts, maximize
from hmmlvd.hmm.eval import (
           Perplexity,
           sliding_perplexity,
           sliding_token_log_probs,
           window_perplexity,
)
from hmmlvd.hmm.forward import ForwardResult, forward
from hmmlvd.hmm.init import mle_from_labels, random_parameters
from hmmlvd.hmm.model import HMM, HMMConfig
from hmmlvd.hmm.sample import sample
from hmmlvd.hmm.train import (
    Phase,
    TrainConfig,
    TrainingInterrupted,
    TrainState,
    load_checkpoint,
    save_checkpoint,
    train,
)

__all__ = ["HMM", "CountAccumulator", "ExpectedCounts", "ForwardResult", "HMMConfig",
           "Perplexity", "Phase", "TrainConfig", "TrainState", "TrainingInterrupted",
           "expected_counts", "forward", "load_checkpoint", "maximize", "mle_from_labels",
           "random_parameters", "sample", "save_checkpoint", "sliding_perplexity",
           "sliding_token_log_probs", "train", "window_perplexity"]

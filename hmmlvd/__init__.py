"""hmmlvd: large tractable generative models (HMMs, probabilistic circuits) trained with
latent variable distillation."""

from hmmlvd.core.errors import (
    CheckpointError,
    DataError,
    EncoderError,
    HMMLVDError,
    InsufficientMemoryError,
    ParameterError,
)
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import HMM

__version__ = "0.1.0"
__all__ = ["HMM", "CheckpointError", "DataError", "EMConfig", "EncoderError", "HMMLVDError",
           "InsufficientMemoryError", "ParameterError", "__version__"]

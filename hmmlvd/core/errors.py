"""Library error types: every failure a user can cause raises one of these, with a message
that names the problem and, where there is one, the fix."""


class HMMLVDError(Exception):
    """Base class of all errors raised deliberately by hmmlvd."""


class DataError(HMMLVDError, ValueError):
    """Input data is malformed: wrong shape or dtype, token ids out of range, empty data,
    a data folder without the expected files."""


class ParameterError(HMMLVDError, ValueError):
    """Model parameters are invalid: NaN, negative, not normalised, or wrongly shaped."""


class CheckpointError(HMMLVDError):
    """A saved model folder is missing, incomplete, or does not match its config."""


class WriteError(CheckpointError, OSError):
    """A model or checkpoint folder could not be written (disk full, quota, permission
    denied): one line naming the folder, the reason and the fix. An :class:`OSError` too (its
    ``errno`` set where the reason has one), so code that handles OS errors handles it."""


class EncoderError(HMMLVDError):
    """A text encoder cannot be loaded or used: the packaged default is not installed, a hub
    name is not available offline, a folder is not a model, or the tokenizer is unsuitable."""


class InsufficientMemoryError(ParameterError):
    """A model (or EM on a batch) would need more memory than the device has available: raised
    before anything large is allocated, with the estimate, what is available and what to change
    (see :mod:`hmmlvd.core.memory`)."""

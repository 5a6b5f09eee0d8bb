"""The sizes of an HMM (:class:`HMMConfig`), validated when made; the bottom of ``hmmlvd.hmm``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hmmlvd.core.errors import ParameterError


@dataclass(frozen=True)
class HMMConfig:
    """Sizes of an HMM: H hidden states, V words, windows of T tokens."""

    num_states: int
    vocab_size: int
    length: int = 32
    homogeneous: bool = False

    def __post_init__(self) -> None:
        for name in ("num_states", "vocab_size", "length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name} must be a positive integer, got {value!r}")

    @property
    def transition_positions(self) -> int:
        """P_A: number of stored transition matrices."""
        return 1 if self.homogeneous else self.length - 1

    @property
    def emission_positions(self) -> int:
        """P_B: number of stored emission matrices."""
        return 1 if self.homogeneous else self.length

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of each parameter tensor."""
        h, v = self.num_states, self.vocab_size
        return {"initial": (h,), "transition": (self.transition_positions, h, h),
                "emission": (self.emission_positions, v, h)}

    def to_dict(self) -> dict:
        return asdict(self)

"""What a candidate's compression is: the parameters every :mod:`search.compress.steps` step reads."""

from __future__ import annotations

from dataclasses import dataclass

from search.config import number
from search.errors import ConfigError

WEIGHT_BITS = (1, 2, 4, 8, 16, 32)
ACTIVATION_BITS = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Compression:
    """Structured (``ps``) and unstructured (``pu``) pruning ratios; weight and activation bits (32 = none)."""

    ps: float = 0.0
    pu: float = 0.0
    qw: int = 32
    qa: int = 32

    def __post_init__(self):
        for key in ("ps", "pu"):
            value = getattr(self, key)
            if not number(value) or value < 0:
                raise ConfigError(f"{key} must be a number >= 0, got {value!r}")
        if self.ps + self.pu >= 1:
            raise ConfigError(f"ps + pu must be below 1 (they are fractions of the weights), got "
                              f"ps={self.ps} + pu={self.pu} = {self.ps + self.pu:g}")
        if self.qw not in WEIGHT_BITS or isinstance(self.qw, bool):
            raise ConfigError(f"qw must be one of {', '.join(map(str, WEIGHT_BITS))} bits, got {self.qw!r}")
        if self.qa not in ACTIVATION_BITS or isinstance(self.qa, bool):
            raise ConfigError(f"qa must be one of {', '.join(map(str, ACTIVATION_BITS))} bits, got {self.qa!r}")

"""The candidate: what one trial builds (architecture, compression, training recipe) and what it costs before
training (parameters, MACs, the score). ``from search.candidate import Candidate`` is a public import path."""

from search.candidate.candidate import Candidate, Footprint, compress, footprint

__all__ = ["Candidate", "Footprint", "compress", "footprint"]

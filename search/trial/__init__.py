"""One trial of a study: the pipeline of its steps (:mod:`search.trial.pipeline`), early stopping, the objectives it
is measured by, and the record it leaves in the storage."""

# The latency objective registers itself in search.trial.objectives; importing it here makes it known wherever
# objectives are read, without the objectives module importing the measurement (which imports it).
from search.trial import latency  # noqa: F401

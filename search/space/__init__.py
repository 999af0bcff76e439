"""The search space: the parameters a study samples (:mod:`search.space.params`) and the space file that bounds
them (:mod:`search.space.space`)."""

"""Every benchmark, behind ``micronet-search bench [WHAT]``; each writes its section of BENCHMARKS.md.

- trial throughput (plain ``bench``, :mod:`search.bench.suite`): one module per figure (:mod:`throughput`,
  :mod:`concurrency`, :mod:`memory`, :mod:`orchestration`), each returning :class:`Row` objects;
- ``bench search`` (:mod:`search.bench.search`): hypervolume per budget of the search strategies on real images;
- ``bench recipe`` (:mod:`search.bench.recipe`): validation accuracy of each training option;
- ``bench train``, ``bench profile``: one architecture's training throughput, where a step's time goes;
- ``bench workers`` (:mod:`search.bench.worker_overhead`), ``bench hand-workers``: orchestration and study
  throughput with more workers; ``bench stopper`` (:mod:`search.bench.early_stopping`): with and without stopping.

:mod:`search.bench.table` prints the rows and writes them, with the machine line (:mod:`search.machine`).
"""

from search.bench.table import Row, machine

__all__ = ["Row", "machine"]

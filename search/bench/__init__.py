"""Benchmarks of the product's main performance figure, trial throughput: ``micronet-search bench``.

One module per figure (:mod:`throughput`, :mod:`concurrency`, :mod:`memory`, :mod:`orchestration`); each returns
:class:`Row` objects, which :mod:`search.bench.table` prints as a table and writes to BENCHMARKS.md.
"""

from search.bench.table import Row, machine

__all__ = ["Row", "machine"]

"""micronet-search: find small, accurate image classifiers with a multi-objective Optuna study."""

__version__ = "0.1.0"

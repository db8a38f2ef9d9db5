"""p3bench: a bench for data selection in language-model training."""

__version__ = "0.1.0"

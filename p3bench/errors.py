"""Errors that reach the user as one line: the bad value and what was expected."""


class P3BenchError(Exception):
    """A user-facing error. Its message is one line naming the bad value and what was expected."""


class ConfigError(P3BenchError):
    """A configuration value is invalid (unknown name, out-of-range budget, ...)."""


class DataError(P3BenchError):
    """A data file or record is malformed or missing required fields."""


class ModelLoadError(P3BenchError):
    """A model or tokenizer cannot be loaded (for example offline and not cached)."""

"""Selection methods: LightningDataModules registered by name (``method=NAME`` -> ``METHODS.get(NAME)``)."""

from p3bench.registry import Registry

METHODS: Registry = Registry("method")
METHODS.register_lazy("full", "p3bench.methods.simple:FullData")
METHODS.register_lazy("random", "p3bench.methods.simple:RandomSubset")

__all__ = ["METHODS"]

"""Selection methods: LightningDataModules registered by name (``method=NAME`` -> ``METHODS.get(NAME)``)."""

from p3bench.registry import Registry

METHODS: Registry = Registry("method")
METHODS.register_lazy("full", "p3bench.methods.simple:FullData")
METHODS.register_lazy("random", "p3bench.methods.simple:RandomSubset")
# P3 (arXiv 2408.05541) and the ablations and baselines built from its parts
for _name, _cls in {
    "p3": "P3",
    "p3_no_dpp": "P3NoDPP",
    "p3_no_spl": "P3NoSPL",
    "p3_static": "P3Static",
    "spl": "SelfPacedLearning",
    "dpp": "DiversityOnly",
    "hardest": "HardestFirst",
    "easiest": "EasiestFirst",
    "curriculum": "LevelCurriculum",
}.items():
    METHODS.register_lazy(_name, f"p3bench.methods.p3:{_cls}")

__all__ = ["METHODS"]

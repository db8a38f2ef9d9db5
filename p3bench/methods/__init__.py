"""Selection methods: LightningDataModules registered by name (``method=NAME`` -> ``METHODS.get(NAME)``)."""

from p3bench.registry import Registry

METHODS: Registry = Registry("method")
METHODS.register_lazy("full", "p3bench.methods.simple:FullData")
METHODS.register_lazy("random", "p3bench.methods.simple:RandomSubset")
METHODS.register_lazy("random_dynamic", "p3bench.methods.simple:RandomEachRound")
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
# the 19-sampler comparison (arXiv 2402.09668): coverage samplers and quality-score samplers; each size or
# checkpoint of a scorer family is its own name so that results group by it
for _name, _target in {
    "density": "coverage:DensitySampler",
    "semdedup": "coverage:SemDeDup",
    "prototypes": "coverage:Prototypes",
    "ask_llm": "quality_filters:AskLLM",
    "perplexity": "quality_filters:PerplexityFilter",
}.items():
    METHODS.register_lazy(_name, f"p3bench.methods.{_target}")
for _size in ("small", "base", "large", "xl", "xxl"):
    METHODS.register_lazy(f"askllm_{_size}", f"p3bench.methods.quality_filters:AskLLM{_size.capitalize()}")
    METHODS.register_lazy(
        f"perplexity_{_size}", f"p3bench.methods.quality_filters:Perplexity{_size.capitalize()}"
    )
for _step in ("20k", "100k", "300k", "500k", "700k"):
    METHODS.register_lazy(
        f"perplexity_{_step}", f"p3bench.methods.quality_filters:PerplexityAt{_step.upper()}"
    )

# hard-sample reweighting (arXiv 2402.14270): in-batch IR-DRO and MidRanking, and the offline loss-based
# baselines (a pool loss band, RHO-loss style reducible loss)
for _name, _target in {
    "irdro": "in_batch:IRDRO",
    "midranking": "in_batch:MidRanking",
    "loss_band": "loss_filters:LossBand",
    "rho_loss": "loss_filters:ReducibleLoss",
}.items():
    METHODS.register_lazy(_name, f"p3bench.methods.{_target}")

__all__ = ["METHODS"]

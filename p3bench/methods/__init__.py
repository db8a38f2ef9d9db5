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

# DELIFT (arXiv 2411.04425): submodular selection over an in-context utility kernel (one objective per fine-tuning
# stage), its sentence-embedding variant, and the DEFT-UCS baseline it compares with
for _name, _cls in {
    "delift": "DELIFT",
    "delift_task": "DELIFTTask",
    "delift_continual": "DELIFTContinual",
    "delift_se": "DELIFTSE",
    "delift_se_task": "DELIFTSETask",
    "delift_se_continual": "DELIFTSEContinual",
}.items():
    METHODS.register_lazy(_name, f"p3bench.methods.delift:{_cls}")
METHODS.register_lazy("deft_ucs", "p3bench.methods.deft_ucs:DeftUCS")

# multi-agent collaborative selection (arXiv 2410.08102): quality, domain and topic agents mixed by a console
# that learns during training, re-selecting every U optimiser steps; each agent alone, each pair, and fixed
# equal mixing without the collaborative update
for _name, _cls in {
    "multi_agent": "MultiAgent",
    "multi_agent_quality": "MultiAgentQuality",
    "multi_agent_domain": "MultiAgentDomain",
    "multi_agent_topic": "MultiAgentTopic",
    "multi_agent_quality_domain": "MultiAgentQualityDomain",
    "multi_agent_quality_topic": "MultiAgentQualityTopic",
    "multi_agent_domain_topic": "MultiAgentDomainTopic",
    "multi_agent_fixed": "MultiAgentFixed",
}.items():
    METHODS.register_lazy(_name, f"p3bench.methods.multi_agent:{_cls}")

# controls: selections whose answer is known (positive: the budget without planted defects; negative: planted
# defects over-represented), marked as controls wherever methods are listed; the only methods that may read
# the datasets' oracle fields (p3bench/methods/controls.py)
CONTROLS: frozenset[str] = frozenset({"oracle_clean", "oracle_defects"})
METHODS.register_lazy("oracle_clean", "p3bench.methods.controls:OracleClean")
METHODS.register_lazy("oracle_defects", "p3bench.methods.controls:OracleDefects")


def is_control(name: str) -> bool:
    """Whether the method registered as ``name`` is a control (a selection whose effect is known in advance,
    to check a testbed), not a method to compare. False for a name that is not registered. Answered without
    importing the method (report code can call it cheaply); its class says the same (``control = True``)."""
    return name in CONTROLS


def control_names() -> list[str]:
    """The names of the registered controls, sorted."""
    return sorted(CONTROLS)


__all__ = ["CONTROLS", "METHODS", "control_names", "is_control"]

"""Dataset adapters: raw records (hub id or local files) -> standard :class:`Example` splits."""

import inspect

from p3bench.data.example import DatasetSplits, Example
from p3bench.errors import ConfigError
from p3bench.registry import Registry, closest

DATASETS: Registry = Registry("dataset")
DATASETS.register_lazy("synthetic_math", "p3bench.data.synthetic_math:load_synthetic_math")
DATASETS.register_lazy("math", "p3bench.data.math:load_math")
DATASETS.register_lazy("gsm8k", "p3bench.data.gsm8k:load_gsm8k")
DATASETS.register_lazy("apps", "p3bench.data.apps:load_apps")
# instructions and reference responses, the instruction task (DELIFT, arXiv 2411.04425)
DATASETS.register_lazy("alpaca", "p3bench.data.instruction:load_alpaca")
DATASETS.register_lazy("dolly", "p3bench.data.instruction:load_dolly")
DATASETS.register_lazy("gsm8k_instruct", "p3bench.data.instruction:load_gsm8k_instruct")
# a pool from one dataset, the validation (target) and test splits from another: task-specific selection
DATASETS.register_lazy("instruction_transfer", "p3bench.data.transfer:load_transfer")
# pre-training text, the lm task (held-out perplexity; arXiv 2402.09668). gutenberg and tinyshakespeare are
# plain-text files (p3bench.data.text.load_text_files), which text_mix components can also name as text_files
DATASETS.register_lazy("c4", "p3bench.data.text:load_c4")
DATASETS.register_lazy("corpus_files", "p3bench.data.corpus_files:load_corpus_files")
DATASETS.register_lazy("pile", "p3bench.data.text:load_pile")
DATASETS.register_lazy("gutenberg", "p3bench.data.text:load_gutenberg")
DATASETS.register_lazy("tinyshakespeare", "p3bench.data.text:load_tinyshakespeare")
DATASETS.register_lazy("text_mix", "p3bench.data.text:load_text_mix")
# SlimPajama from the hub (the pool of multi-agent selection, arXiv 2410.08102), its source set as the domain
DATASETS.register_lazy("slimpajama", "p3bench.data.slimpajama:load_slimpajama")


def load_dataset_splits(name: str, **params) -> DatasetSplits:
    """Build the named dataset's splits from its config ``params``; an unknown key is a one-line error."""
    loader = DATASETS.get(name)
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("self",)]
    for key in params:
        if key not in accepted:
            hint = closest(key, accepted)
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(
                f"dataset.params.{key} is not a parameter of dataset {name!r}: expected one of "
                f"{', '.join(accepted)}{suggestion}"
            )
    return loader(**params)


__all__ = ["DATASETS", "DatasetSplits", "Example", "load_dataset_splits"]

"""Build the tokenizer and the causal LM a run trains: a tiny model from a config, or any Hugging Face
``AutoModelForCausalLM`` by name or path (optionally with LoRA adapters through peft)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from p3bench.errors import ConfigError, ModelLoadError
from p3bench.models.tokenizer import local_tokenizer, pretrained_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tokenizer(
    tokenizer_cfg: Mapping[str, Any], train_texts: Sequence[str], cache_dir: str | Path, offline: bool
) -> PreTrainedTokenizerBase:
    """``kind: local_bpe`` trains (or loads the cached) BPE on the train pool; ``kind: pretrained`` loads one."""
    kind = tokenizer_cfg.get("kind")
    if kind == "local_bpe":
        return local_tokenizer(train_texts, int(tokenizer_cfg.get("vocab_size", 512)), cache_dir)
    if kind == "pretrained":
        return pretrained_tokenizer(str(tokenizer_cfg["name_or_path"]), offline)
    raise ConfigError(f"model.tokenizer.kind={kind!r} is not supported: expected 'local_bpe' or 'pretrained'")


def build_causal_lm(
    model_cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, offline: bool
) -> PreTrainedModel:
    """A causal LM from ``model_cfg``: ``architecture`` builds a fresh model from a config (seeded by the
    caller's global seed), ``name_or_path`` loads pretrained weights; ``lora`` wraps it with peft."""
    dtype = DTYPES.get(str(model_cfg.get("dtype", "float32")))
    if dtype is None:
        raise ConfigError(
            f"model.dtype={model_cfg.get('dtype')!r} is not supported: expected one of {list(DTYPES)}"
        )
    architecture = model_cfg.get("architecture")
    name_or_path = model_cfg.get("name_or_path")
    if (architecture is None) == (name_or_path is None):
        raise ConfigError(
            "model config must set exactly one of 'architecture' (build from a config) or 'name_or_path'"
        )
    if architecture is not None:
        arch = dict(architecture)
        model_type = arch.pop("model_type")
        config = AutoConfig.for_model(
            model_type,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **arch,
        )
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(name_or_path), dtype=dtype, local_files_only=offline
            )
        except Exception as exc:  # noqa: BLE001 - many exception types; the user needs one line
            where = (
                "a local directory or a model in the Hugging Face cache (offline=true)"
                if offline
                else "a hub id"
            )
            raise ModelLoadError(
                f"model.name_or_path={name_or_path!r} cannot be loaded: expected {where} ({type(exc).__name__})"
            ) from exc
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    lora = model_cfg.get("lora")
    if lora:
        model = _with_lora(model, dict(lora))
    return model


def _with_lora(model: PreTrainedModel, lora: dict[str, Any]) -> PreTrainedModel:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("model.lora is set but peft is not installed: pip install 'p3bench[peft]'") from exc
    config = LoraConfig(
        r=int(lora.get("r", 64)),
        lora_alpha=int(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.1)),
        target_modules=lora.get("target_modules", "all-linear"),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)

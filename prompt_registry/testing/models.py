"""Tiny, randomly initialised Hugging Face models built locally (tests, demos; no hub access)."""

from __future__ import annotations

from pathlib import Path


def _save_quietly(model, path: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(path, safe_serialization=True)


def build_tiny_llama(path: str | Path, *, hidden_size: int = 32, layers: int = 2, vocab_size: int = 128, seed: int = 0) -> Path:
    """Save a tiny LlamaForCausalLM to ``path`` (config.json + model.safetensors) and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    path = Path(path)
    _save_quietly(model, path)
    return path


def build_tiny_bert(path: str | Path, *, hidden_size: int = 48, layers: int = 2, vocab_size: int = 128, seed: int = 0) -> Path:
    """Save a tiny BertModel to ``path`` and return it."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=128,
    )
    model = BertModel(config)
    path = Path(path)
    _save_quietly(model, path)
    return path

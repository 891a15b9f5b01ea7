"""Tiny, randomly initialised Hugging Face models built locally (tests, demos; no hub access).

Each folder gets a real tokenizer (a word-level ``tokenizers`` model over a small vocabulary that
covers the default templates, digits and the synthetic data's words), so it loads with
``AutoTokenizer``/``AutoModel*`` exactly like a downloaded model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..data.synthetic import synthetic_vocabulary

TEMPLATE_WORDS = (
    "user", "rated", "the", "movie", "rating", "has", "these", "movies", "how", "would", "rate", "none",
    "yes", "no", '"', ":", ".", ",", "(", ")", "?", *[str(d) for d in range(10)],
)


def build_tokenizer(path: Path, words: Iterable[str], *, decoder: bool) -> None:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*specials, *(w.lower() for w in words)]))}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if decoder:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
        extra = {"bos_token": "<s>", "eos_token": "</s>"}
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        extra = {"cls_token": "[CLS]", "sep_token": "[SEP]"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", **extra)
    fast.save_pretrained(path)


def _save(model, path: Path, *, decoder: bool, words: Iterable[str]) -> Path:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    build_tokenizer(path, words, decoder=decoder)
    return path


def _vocab(extra: Iterable[str]) -> list[str]:
    return [*TEMPLATE_WORDS, *synthetic_vocabulary(), *extra]


def build_tiny_llama(path: str | Path, *, hidden_size: int = 32, layers: int = 2, vocab_size: int = 128,
                     seed: int = 0, extra_words: Iterable[str] = ()) -> Path:
    """Save a tiny LlamaForCausalLM (and its tokenizer) to ``path`` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    words = _vocab(extra_words)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=max(vocab_size, len(words) + 8), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0, bos_token_id=4, eos_token_id=5,
    )
    return _save(LlamaForCausalLM(config), Path(path), decoder=True, words=words)


def build_tiny_bert(path: str | Path, *, hidden_size: int = 48, layers: int = 2, vocab_size: int = 128,
                    seed: int = 0, extra_words: Iterable[str] = ()) -> Path:
    """Save a tiny BertModel (and its tokenizer) to ``path`` and return it."""
    import torch
    from transformers import BertConfig, BertModel

    words = _vocab(extra_words)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=max(vocab_size, len(words) + 8), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=256, pad_token_id=0,
    )
    return _save(BertModel(config), Path(path), decoder=False, words=words)

"""Identity of a base model: what it is (config) and exactly which weights (fingerprint).

A model is identified by the sha256 over its config and weight files, not by its name: a prompt
made for one fingerprint is refused on another (``ModelMismatchError``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import InvalidFileError

# Files whose bytes define the model's behaviour for prompts: config and weights. Tokenizer
# files are deliberately left out: they do not change the embedding space a prompt lives in.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_CONFIG_FILES = ("config.json",)
_BLOCK = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    architecture: str
    model_type: str | None
    hidden_size: int
    vocab_size: int | None
    fingerprint: str
    files: dict[str, str]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _first(config: dict[str, Any], *names: str) -> Any:
    for scope in (config, config.get("text_config") or {}):
        for name in names:
            if scope.get(name) is not None:
                return scope[name]
    return None


def describe_model(path: str | os.PathLike[str]) -> ModelDescription:
    """Read ``config.json`` and fingerprint the config and weight files of a local model folder."""
    folder = Path(path)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise InvalidFileError(f"model folder {folder} does not exist; pass the folder holding config.json")
    if not config_path.is_file():
        raise InvalidFileError(
            f"{folder} has no config.json; pass a Hugging Face model folder (save_pretrained output)"
        )
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise InvalidFileError(f"{config_path} is not valid JSON ({exc})") from None
    hidden = _first(config, "hidden_size", "d_model", "n_embd", "dim")
    if not isinstance(hidden, int):
        raise InvalidFileError(f"{config_path} names no hidden size (hidden_size/d_model/n_embd)")
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not weights:
        raise InvalidFileError(f"{folder} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
    files = {p.name: sha256_file(p) for p in [config_path, *weights]}
    fingerprint = hashlib.sha256(
        "".join(f"{name}\0{digest}\n" for name, digest in sorted(files.items())).encode()
    ).hexdigest()
    architectures = config.get("architectures") or []
    return ModelDescription(
        architecture=architectures[0] if architectures else str(config.get("model_type", "unknown")),
        model_type=config.get("model_type"),
        hidden_size=hidden,
        vocab_size=_first(config, "vocab_size"),
        fingerprint=fingerprint,
        files=files,
    )

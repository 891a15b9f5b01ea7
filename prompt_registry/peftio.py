"""Hugging Face PEFT prompt-tuning folders, out and in (no PEFT import needed; nothing unpickled).

PEFT saves a prompt-tuning adapter as a folder with ``adapter_config.json`` (``peft_type``
``PROMPT_TUNING``, ``task_type``, ``base_model_name_or_path``, ``revision``,
``num_virtual_tokens``, ``token_dim``, ``num_transformer_submodules``, ...) and
``adapter_model.safetensors`` holding one tensor ``prompt_embeddings`` of shape
``(num_virtual_tokens x num_transformer_submodules, token_dim)``. PEFT ties it to its base model by
name and revision strings only; we also write our model fingerprint and the set in the
safetensors metadata (``prompt_registry.*`` keys), and refuse, on import, a folder whose
fingerprint is not the target model's.

Where the prompt goes: PEFT puts the virtual tokens in front of the whole input. Our templates
place ``<user>`` where they say; a prompt exported from a template that puts ``<user>`` first is
used by PEFT exactly as we use it (a test checks the outputs are equal on a tiny Llama).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ._util import echo
from .errors import InvalidFileError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TENSOR = "prompt_embeddings"
META_PREFIX = "prompt_registry."
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_dirname(user: str) -> str:
    """A folder name for ``user``: the id itself when it is filesystem-safe, else its safe
    characters plus a short hash of the id (distinct users never share a folder)."""
    cleaned = _SAFE.sub("_", user)[:80]
    if cleaned == user and user not in (".", "..") and not user.startswith("."):
        return user
    return f"{cleaned.lstrip('.') or 'user'}-{hashlib.sha256(user.encode()).hexdigest()[:12]}"


def peft_config(*, base_model: str, revision: str | None, num_virtual_tokens: int, token_dim: int, decoder: bool,
                num_layers: int | None = None, num_attention_heads: int | None = None) -> dict[str, Any]:
    """The ``adapter_config.json`` of a prompt-tuning adapter, with PEFT's field names."""
    return {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM" if decoder else "FEATURE_EXTRACTION",
        "base_model_name_or_path": base_model, "revision": revision, "inference_mode": True,
        "num_virtual_tokens": num_virtual_tokens, "token_dim": token_dim, "num_transformer_submodules": 1,
        "num_attention_heads": num_attention_heads, "num_layers": num_layers, "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None, "tokenizer_name_or_path": None, "tokenizer_kwargs": None,
    }


def write_folder(folder: Path, prompt: np.ndarray, config: dict[str, Any], metadata: dict[str, str]) -> None:
    """One PEFT folder: ``prompt`` is ``(num_virtual_tokens, token_dim)``."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({TENSOR: np.ascontiguousarray(prompt)}, str(folder / WEIGHTS_FILE),
              metadata={"format": "pt", **{META_PREFIX + k: str(v) for k, v in metadata.items()}})


@dataclasses.dataclass(frozen=True)
class PeftPrompt:
    folder: Path
    user: str
    prompt: np.ndarray  # (num_virtual_tokens x num_transformer_submodules, token_dim)
    config: dict[str, Any]
    metadata: dict[str, str]  # our ``prompt_registry.*`` keys (prefix dropped)

    @property
    def fingerprint(self) -> str | None:
        return self.metadata.get("fingerprint")


def _read_one(folder: Path) -> PeftPrompt:
    from safetensors import safe_open

    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidFileError(f"{folder / CONFIG_FILE} is not a readable JSON object ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "PROMPT_TUNING":
        got = config.get("peft_type") if isinstance(config, dict) else None
        raise InvalidFileError(f"{folder} holds a PEFT {echo(got)} adapter, not PROMPT_TUNING: only prompt-tuning adapters are soft prompts")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InvalidFileError(f"{folder} has no {WEIGHTS_FILE} (PEFT's .bin weights are pickles and are never read: re-save with "
                               "safe_serialization=True)")
    try:
        with safe_open(str(weights), framework="numpy") as fh:
            names = list(fh.keys())
            if names != [TENSOR]:
                raise InvalidFileError(f"{weights} holds {names}, not the one tensor {TENSOR!r} of a prompt-tuning adapter")
            prompt = fh.get_tensor(TENSOR)
            raw_meta = fh.metadata() or {}
    except InvalidFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise InvalidFileError(f"{weights} is not a readable safetensors file ({exc})") from None
    tokens, dim = config.get("num_virtual_tokens"), config.get("token_dim")
    modules = config.get("num_transformer_submodules") or 1
    if not (isinstance(tokens, int) and isinstance(dim, int) and isinstance(modules, int)):
        raise InvalidFileError(f"{folder / CONFIG_FILE} lacks integer num_virtual_tokens / token_dim / num_transformer_submodules")
    if prompt.ndim != 2 or prompt.shape != (tokens * modules, dim):
        raise InvalidFileError(f"{weights}: {TENSOR} has shape {tuple(prompt.shape)}, but the config says "
                               f"{tokens} virtual tokens x {modules} submodule(s) of width {dim}")
    if modules != 1:
        raise InvalidFileError(f"{folder} has num_transformer_submodules={modules} (an encoder-decoder prompt); only one is supported")
    metadata = {k[len(META_PREFIX):]: v for k, v in raw_meta.items() if k.startswith(META_PREFIX)}
    return PeftPrompt(folder, metadata.get("user") or folder.name, prompt, config, metadata)


def read_folders(path: str | Path) -> list[PeftPrompt]:
    """One PEFT prompt-tuning folder, or every one directly inside ``path`` (sorted by name)."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return [_read_one(path)]
    if not path.is_dir():
        raise InvalidFileError(f"{path} is not a folder")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())
    if not folders:
        raise InvalidFileError(f"{path} holds no PEFT folder (no {CONFIG_FILE} in it or in its subfolders)")
    return [_read_one(f) for f in folders]

"""Crash-safe training checkpoints: one safetensors file (tensors) with JSON metadata.

Written to a temporary file, fsynced, then renamed over the previous checkpoint: a crash leaves
either the old or the new checkpoint, never a torn one. Nothing is pickled: optimizer states are
flattened into named tensors plus JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._util import atomic_file
from ..errors import InvalidFileError


def flatten_optimizer(prefix: str, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Move an optimizer state_dict's tensors into ``tensors``; return the JSON-able rest."""
    rest: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        rest["state"][str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{pid}.{key}"] = value.detach().cpu().contiguous()
                rest["state"][str(pid)][key] = {"tensor": f"{prefix}.{pid}.{key}"}
            else:
                rest["state"][str(pid)][key] = value
    return rest


def unflatten_optimizer(rest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entries in rest["state"].items():
        state[int(pid)] = {
            key: tensors[value["tensor"]] if isinstance(value, dict) and "tensor" in value else value
            for key, value in entries.items()
        }
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"meta": json.dumps(meta)})


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["meta"])
        return load_file(str(path)), meta
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise InvalidFileError(f"checkpoint {path} is unreadable ({exc}); delete it and restart without --resume") from None

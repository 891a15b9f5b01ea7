"""The dtypes prompts are stored in: float32, float16 and bfloat16.

numpy has no bfloat16 of its own; ``ml_dtypes`` (what JAX uses) adds one, and importing this
module registers it, so ``np.dtype("bfloat16")`` works everywhere a dtype name is read from the
catalogue. Its kind is ``"V"``, not ``"f"``: test with ``is_float``. torch has bfloat16 but cannot
convert it from or to numpy: ``to_torch`` and ``from_torch`` reinterpret the 16-bit words (no
copy, no rounding).

Zarr v3 has no bfloat16 data type either: a bfloat16 array is stored as ``uint16`` words with the
attribute ``prompt_registry.dtype = "bfloat16"`` (``zarr_dtype``, ``zarr_attributes``,
``dtype_of_metadata``); another Zarr reader sees the raw words and the attribute saying what they are.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
DTYPE_ATTRIBUTE = "prompt_registry.dtype"
_WORDS = np.dtype(np.uint16)


def is_float(dtype: Any) -> bool:
    """A floating-point dtype numpy knows (bfloat16 included)."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype == BFLOAT16


def to_torch(array: np.ndarray) -> Any:
    """``torch.from_numpy`` that also takes bfloat16 (shares the memory)."""
    import torch

    if array.dtype == BFLOAT16:
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def from_torch(tensor: Any) -> np.ndarray:
    """``tensor.numpy()`` (on the CPU) that also gives bfloat16."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(BFLOAT16)
    return tensor.numpy()


def zarr_dtype(dtype: str) -> str:
    """The Zarr data type an array of ``dtype`` is written with."""
    return "uint16" if dtype == "bfloat16" else dtype


def zarr_attributes(dtype: str) -> dict[str, Any]:
    return {DTYPE_ATTRIBUTE: dtype} if dtype == "bfloat16" else {}


def dtype_of_metadata(meta: dict[str, Any]) -> str:
    """The dtype of an array from its ``zarr.json``: the data type, unless the attribute says the
    ``uint16`` words are bfloat16."""
    data_type = str(meta["data_type"])
    attributes = meta.get("attributes") or {}
    if data_type == "uint16" and isinstance(attributes, dict) and attributes.get(DTYPE_ATTRIBUTE) == "bfloat16":
        return "bfloat16"
    return data_type


def as_words(array: np.ndarray) -> np.ndarray:
    """What zarr-python is given for an array of ours: bfloat16 as its ``uint16`` words."""
    return array.view(_WORDS) if array.dtype == BFLOAT16 else array

"""Reading and writing prompt files safely: safetensors, or ``.npy`` without pickle.

Nothing here ever unpickles. A pickle (``.pt``, ``.pkl``, an object ``.npy``) is recognised and
refused with a message saying how to convert it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._util import atomic_file, echo, preview
from .dtypes import BFLOAT16, from_torch
from .errors import DTypeError, InvalidFileError

PICKLE_MAGIC = b"\x80"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save() files are zip archives holding a pickle
NPY_MAGIC = b"\x93NUMPY"
PROMPTS_KEY = "prompts"


def users_csv_path(path: Path) -> Path:
    """The users file written beside an export: ``prompts.npy`` -> ``prompts.users.csv``."""
    return path.with_name(path.stem + ".users.csv")


def read_csv_columns(path: str | os.PathLike[str], columns: Sequence[str], what: str) -> list[list[str]]:
    """The values of ``columns`` (each non-empty, stripped), one list per column, from a CSV whose
    header names them (other columns are ignored); ``what`` names the file in errors."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: the byte-order mark Excel writes
            reader = csv.DictReader(fh)
            absent = [c for c in columns if c not in (reader.fieldnames or [])]
            if absent:
                naming = "it" if len(columns) == 1 else " and ".join(columns)
                raise InvalidFileError(
                    f"{path} has no {' or '.join(f'`{c}`' for c in absent)} column (found {preview(reader.fieldnames or [])}); "
                    f"the first line must be a header naming {naming}"
                )
            out: list[list[str]] = [[] for _ in columns]
            for row in reader:
                for name, values in zip(columns, out):
                    value = (row.get(name) or "").strip()
                    if not value:  # line_num counts physical lines (DictReader skips blank ones)
                        raise InvalidFileError(f"{path}:{reader.line_num}: empty {name}")
                    values.append(value)
            return out
    except FileNotFoundError:
        raise InvalidFileError(f"{what} {path} does not exist") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidFileError(f"{path} is not a readable UTF-8 CSV ({echo(str(exc))})") from None


def read_users_csv(path: str | os.PathLike[str]) -> list[str]:
    """Read a CSV with a ``user_id`` column (other columns are ignored)."""
    return read_csv_columns(path, ["user_id"], "users file")[0]


def write_users_csv(path: Path, users: list[str]) -> None:
    """A ``user_id`` CSV (not synced: write it inside ``atomic_file``)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id"])
        writer.writerows([u] for u in users)


def _refuse_pickle(path: Path, head: bytes) -> None:
    if head.startswith(PICKLE_MAGIC) or head.startswith(ZIP_MAGIC):
        raise InvalidFileError(
            f"{path} is a Python pickle (or a torch.save archive); prompt-registry never unpickles "
            "untrusted files. Convert it where you trust it: "
            "`safetensors.torch.save_file({'prompts': tensor}, 'prompts.safetensors')`"
        )


def load_prompt_file(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """Load prompts from ``.safetensors`` or ``.npy``.

    Returns ``(array, users)`` where ``users`` is None when the file does not name them. A
    safetensors file either holds one tensor ``prompts`` (users in the ``users`` metadata, as
    written by ``export_prompts``), or one tensor per user keyed by user id.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except FileNotFoundError:
        raise InvalidFileError(f"prompt file {path} does not exist") from None
    # safetensors: an 8-byte little-endian header length, then the JSON header. Check it first:
    # the length's first byte can be 0x80, which is also how a pickle starts.
    if head[8:9] == b"{":
        return _load_safetensors(path)
    _refuse_pickle(path, head)
    if head.startswith(NPY_MAGIC) or path.suffix == ".npy":
        return _load_npy(path), None
    return _load_safetensors(path)


def _check_npy_size(path: Path) -> None:
    """Refuse a header that declares more data than the file holds, before numpy allocates it (a
    few bytes can declare a petabyte)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            header = np.lib.format.read_array_header_1_0(fh) if version == (1, 0) else np.lib.format.read_array_header_2_0(fh)
            data_start = fh.tell()
    except (ValueError, OSError, EOFError):
        return  # np.load reports a malformed header in its own words
    shape, _, dtype = header
    if dtype.hasobject:
        return  # refused by allow_pickle=False below
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    available = path.stat().st_size - data_start
    if declared != available:
        raise InvalidFileError(
            f"{path} declares {shape} {dtype} ({declared:,} bytes) but holds {max(available, 0):,} bytes of data: "
            "it is truncated or its header is wrong"
        )


def _load_npy(path: Path) -> np.ndarray:
    _check_npy_size(path)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        # raised for object arrays (pickled payload) and for truncated data
        raise InvalidFileError(
            f"{path} is not a valid numeric .npy file ({exc}); save prompts with "
            "`np.save(path, array.astype(np.float32))`"
        ) from None
    except (OSError, EOFError) as exc:
        raise InvalidFileError(f"{path} is not a valid .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise InvalidFileError(f"{path} holds an archive, not one array; use one .npy per set")
    if array.dtype.kind not in "fiubc":  # strings, bytes, dates, structured records: never prompts
        raise DTypeError(f"{path} holds {array.dtype} values, not numbers; save prompts with `np.save(path, array.astype(np.float32))`"
                         + (" (npy has no bfloat16: pass bfloat16 prompts as a .safetensors file, or as float32, which holds every "
                            "bfloat16 value exactly, with --dtype bfloat16)" if array.dtype.kind == "V" and array.dtype.itemsize == 2 else ""))
    return array


def _load_safetensors(path: Path) -> tuple[np.ndarray, list[str] | None]:
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            keys = list(fh.keys())
            tensors = {k: fh.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InvalidFileError(
            f"{path} is not a valid safetensors file ({exc}); it may be truncated or another format"
        ) from None
    if not tensors:
        raise InvalidFileError(f"{path} holds no tensors")

    def to_numpy(t: torch.Tensor) -> np.ndarray:
        if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
            t = t.to(torch.float32)  # float8: numpy has none; the cast is exact
        try:
            return from_torch(t)  # bfloat16 stays bfloat16
        except TypeError as exc:  # e.g. complex or unsigned types numpy cannot take from torch
            raise DTypeError(f"{path} holds a {t.dtype} tensor ({exc}); store prompts as float32 or float16") from None
        except ValueError as exc:  # an empty tensor whose other dimensions multiply past what numpy can index (found by Hypothesis)
            raise InvalidFileError(f"{path} declares a tensor of shape {tuple(t.shape)}, which numpy cannot hold ({exc}); "
                                   "prompts are (users, prompt_len, width)") from None

    if PROMPTS_KEY in tensors:
        users = None
        if "users" in metadata:
            try:
                listed = json.loads(metadata["users"])
            except ValueError:
                listed = None
            if not isinstance(listed, list) or not all(isinstance(u, (str, int)) and not isinstance(u, bool) for u in listed):
                raise InvalidFileError(f"{path}: metadata 'users' must be a JSON list of user ids (strings), like [\"alice\", \"bob\"]")
            users = [str(u) for u in listed]
        return to_numpy(tensors[PROMPTS_KEY]), users
    users = list(tensors)
    shapes = {tuple(t.shape) for t in tensors.values()}
    if len(shapes) != 1:
        raise InvalidFileError(
            f"{path} holds per-user tensors of different shapes {sorted(shapes)}; all prompts of a "
            "set share one (prompt_len, width)"
        )
    return np.stack([to_numpy(tensors[u]) for u in users]), users


def save_prompt_file(path: Path, array: np.ndarray, users: list[str], metadata: dict[str, str]) -> tuple[str, Path | None]:
    """Write prompts as ``.safetensors`` (users in metadata and beside it) or ``.npy`` + users csv."""
    suffix = path.suffix.lower()
    users_path = users_csv_path(path)
    if suffix not in (".safetensors", ".npy"):
        raise InvalidFileError(f"cannot export to {path}: use a .safetensors or .npy file name")
    if suffix == ".npy" and array.dtype == BFLOAT16:
        raise InvalidFileError(f"cannot export bfloat16 prompts to {path}: npy has no bfloat16; export to a .safetensors file (BF16), "
                               "or read them with get_prompts(...).float()")
    with atomic_file(path) as tmp:  # a failed export (disk full, no such folder) leaves nothing behind
        if suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file({PROMPTS_KEY: np.ascontiguousarray(array)}, str(tmp), metadata={**metadata, "users": json.dumps(users)})
            fmt = "safetensors"
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
            fmt = "npy"
        with atomic_file(users_path) as users_tmp:  # the users file first: the prompts file never appears without it
            write_users_csv(users_tmp, users)
    return fmt, users_path

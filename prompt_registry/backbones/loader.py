"""Loading a frozen base model from its local folder, checked against its registered fingerprint.

Never from a hub: ``HF_HUB_OFFLINE`` is forced and only local folders are read. Decoders load with
``AutoModelForCausalLM``, encoders (BERT, MPNet, ...) with ``AutoModel``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .._util import echo
from ..entities import ModelInfo
from ..errors import InvalidArgumentError, InvalidFileError, ModelMismatchError
from ..modelinfo import describe_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def resolve_device(device: str = "auto") -> str:
    """``auto`` means CUDA when present, else CPU (the same code runs on both)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidFileError(f"device {echo(device)} requested but CUDA is not available here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise InvalidFileError(f"unknown device {echo(device)}; use auto, cpu or cuda[:N]")
    return device


PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively (a CUDA card of compute
    capability 8 or more; a CPU with AVX512-BF16 or AMX): where autocast to bf16 is a speed-up."""
    import torch

    if device.startswith("cuda"):  # Ampere and later; older cards emulate it
        return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)
    # oneDNN runs bf16 on any AVX512 CPU (emulated, slower than fp32); only these do it natively
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16`` for a config's ``precision`` on ``device``: ``auto`` is bf16 where the
    device has it natively, else fp32. ``bf16`` runs anywhere (emulated, slower, where not native)."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"unknown precision {echo(precision)}; use {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def is_decoder(info: ModelInfo) -> bool:
    return info.architecture.endswith("ForCausalLM") or info.architecture.endswith("LMHeadModel")


@dataclasses.dataclass
class Backbone:
    """A frozen model plus what prompting needs: tokenizer, embeddings and their scale."""

    info: ModelInfo
    model: Any  # transformers PreTrainedModel, eval mode, requires_grad False
    tokenizer: Any
    device: str
    decoder: bool
    token_norm: float  # mean L2 norm of the token embedding rows
    # the backbone's forward passes: fp32, or bf16 autocast (weights stay fp32; prompts, heads and
    # adapters, which live outside the backbone, stay fp32 and so do their gradients)
    precision: str = "fp32"

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    @property
    def hidden_size(self) -> int:
        return self.info.hidden_size

    def embed(self, input_ids: Any) -> Any:
        return self.model.get_input_embeddings()(input_ids)

    def autocast(self) -> Any:
        """The context the backbone's forward passes run in (a no-op at fp32)."""
        import torch

        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def load_backbone(info: ModelInfo, *, device: str = "auto", verify: bool = True, precision: str = "fp32") -> Backbone:
    """Load ``info``'s folder frozen on ``device``; with ``verify``, refuse changed weights.
    ``precision`` (``PRECISIONS``) is how its forward passes run (``Backbone.autocast``)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if verify:
        current = describe_model(info.source)
        if current.fingerprint != info.fingerprint:
            raise ModelMismatchError(
                f"the files of model {echo(info.name)} at {info.source} changed since registration (fingerprint "
                f"{current.fingerprint[:12]}, registered {info.fingerprint[:12]}); restore them or register "
                "the new weights under a new name"
            )
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    decoder = is_decoder(info)
    loader = AutoModelForCausalLM if decoder else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(info.source, local_files_only=True)
        model = loader.from_pretrained(info.source, local_files_only=True, dtype=torch.float32)
    except OSError as exc:
        raise InvalidFileError(f"cannot load model {echo(info.name)} from {info.source}: {exc}") from None
    model.to(device).eval()  # type: ignore[arg-type]  # transformers wraps PreTrainedModel.to with functools.wraps: its type loses the bound self
    for param in model.parameters():
        param.requires_grad_(False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)  # nn.Module attributes are typed Tensor | Module
        token_norm = float(weight.norm(dim=-1).mean())
    return Backbone(info=info, model=model, tokenizer=tokenizer, device=device, decoder=decoder, token_norm=token_norm,
                    precision=precision)

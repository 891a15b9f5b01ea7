"""Soft-prompt injection: a user's prompt rows replace a placeholder inside a text template.

The template is tokenised around the placeholder, so the prompt's ``prompt_len`` vectors enter the
frozen model through ``inputs_embeds`` exactly where ``<user>`` stood. A batch mixes many users:
their prompt rows are gathered by index, so training and serving batches are never one-user.

Decoders are left-padded (the answer is read at the last position; position ids are rebuilt from
the mask) and read the logits of the answer tokens. Encoders are right-padded (MPNet/RoBERTa derive
positions from the left) and mean-pool the last hidden state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .._util import echo
from ..errors import InvalidFileError
from .loader import Backbone

PLACEHOLDER = "<user>"
DEFAULT_TEMPLATE = 'User <user> rated the movie "{item}". Rating:'
HISTORY_TEMPLATE = 'User <user> has rated these movies: {history}. How would the user rate "{item}"? Rating:'
ANSWER_TOKENS = {"rating": ("1", "2", "3", "4", "5"), "click": ("Yes", "No")}


@dataclasses.dataclass(frozen=True)
class Template:
    """``text`` holds ``<user>`` once and ``{item}``; ``{history}`` when ``history_len`` > 0."""

    text: str = DEFAULT_TEMPLATE
    history_len: int = 0

    def __post_init__(self) -> None:
        if self.text.count(PLACEHOLDER) != 1:
            raise InvalidFileError(f"template {echo(self.text)} must contain the placeholder {PLACEHOLDER} exactly once")
        if "{item}" not in self.text:
            raise InvalidFileError(f"template {echo(self.text)} must contain {{item}}")
        if (self.history_len > 0) != ("{history}" in self.text):
            raise InvalidFileError("use {history} in the template exactly when history_len > 0")

    @classmethod
    def configured(cls, text: str, history_len: int) -> Template:
        """The template a config names: the default text becomes the history template when
        ``history_len`` > 0 (a custom text is kept as given)."""
        return cls(HISTORY_TEMPLATE if history_len > 0 and text == DEFAULT_TEMPLATE else text, history_len)

    @property
    def prefix(self) -> str:
        return self.text.split(PLACEHOLDER)[0]

    def suffix(self, item: str, history: str = "") -> str:
        after = self.text.split(PLACEHOLDER)[1]
        return after.replace("{item}", item).replace("{history}", history)


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids a tokenizer puts before and after a text (e.g. [CLS] .. [SEP], or <s>)."""
    plain = tokenizer("movie", add_special_tokens=False)["input_ids"]
    full = tokenizer("movie", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


class PromptEncoder:
    """Turns (prompt rows, texts) into the backbone's answer features, differentiably in the prompts."""

    def __init__(self, backbone: Backbone, template: Template, prompt_len: int, task_kind: str, max_length: int = 96,
                 item_prior: bool = False, scoring: bool = False) -> None:
        self.backbone = backbone
        self.template = template
        self.task_kind = task_kind
        # one more feature after the backbone's: the item's prior score from the training rows
        # (``training.examples.item_priors``), which a head with ``prior=True`` adds, calibrated
        self.item_prior = item_prior
        # candidate scoring: the features also hold the hidden state at the prompt slot (the user as
        # the model reads them) and the mean hidden state of the text after it (the candidate), for
        # a head that scores their match (``TaskHead(scoring_width=...)``)
        self.scoring = scoring
        self.prompt_len = prompt_len
        self.max_length = max_length
        tok = backbone.tokenizer
        self.lead, self.trail = _special_tokens(tok)
        self.prefix_ids = tok(template.prefix, add_special_tokens=False)["input_ids"]
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self._cache: dict[str, list[int]] = {}
        self.answer_ids: list[int] = []
        if backbone.decoder:
            for word in ANSWER_TOKENS[task_kind]:
                ids = tok(word, add_special_tokens=False)["input_ids"]
                if len(ids) != 1:
                    raise InvalidFileError(
                        f"answer {echo(word)} is {len(ids)} tokens for {backbone.name}'s tokenizer; the {task_kind} "
                        "head reads single-token answers"
                    )
                self.answer_ids.append(ids[0])

    @property
    def feature_size(self) -> int:
        base = len(self.answer_ids) if self.backbone.decoder else self.backbone.hidden_size
        return base + (2 * self.backbone.hidden_size if self.scoring else 0) + int(self.item_prior)

    def tokenize(self, suffixes: Sequence[str]) -> list[list[int]]:
        """Token ids of the text after the placeholder (cached: items repeat across users)."""
        room = self.max_length - len(self.lead) - len(self.prefix_ids) - self.prompt_len - len(self.trail)
        out = []
        for text in suffixes:
            ids = self._cache.get(text)
            if ids is None:
                ids = self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
                # keep the end (the question and the answer cue) when a long history must be cut
                ids = self._cache[text] = ids[-room:] if len(ids) > room else ids
            out.append(ids)
        return out

    def collate(self, suffix_ids: Sequence[Sequence[int]], prior: Any = None) -> dict[str, Any]:
        """A padded batch; ``prior`` (one float per row) is required exactly when ``item_prior`` is on."""
        import torch

        if self.item_prior != (prior is not None):
            raise ValueError("this encoder reads an item prior: pass one per row" if self.item_prior else "this encoder reads no item prior")

        head = list(self.lead) + list(self.prefix_ids)
        seqs = [head + [self.pad_id] * self.prompt_len + list(s) + list(self.trail) for s in suffix_ids]
        width = max(len(s) for s in seqs)
        batch = len(seqs)
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        slot_start = torch.empty(batch, dtype=torch.long)
        for i, seq in enumerate(seqs):
            offset = width - len(seq) if self.backbone.decoder else 0  # left-pad decoders
            ids[i, offset : offset + len(seq)] = torch.tensor(seq)
            mask[i, offset : offset + len(seq)] = 1
            slot_start[i] = offset + len(head)
        out = {"input_ids": ids, "attention_mask": mask, "slot_start": slot_start}
        if prior is not None:
            out["prior"] = torch.as_tensor(prior, dtype=torch.float32).reshape(batch)
        return out

    def tokens(self, suffix_ids: Sequence[Sequence[int]]) -> list[int]:
        """Each row's real (non-padding) tokens, as ``collate`` masks them: the ledger's cost unit."""
        fixed = len(self.lead) + len(self.prefix_ids) + self.prompt_len + len(self.trail)
        return [fixed + len(s) for s in suffix_ids]

    def features(self, prompts: Any, batch: dict[str, Any]) -> Any:
        """``prompts``: (B, prompt_len, width) -> (B, feature_size)."""
        import torch

        device = self.backbone.device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        embeds = self.backbone.embed(ids)
        rows = torch.arange(len(ids), device=device).repeat_interleave(self.prompt_len)
        cols = (batch["slot_start"].to(device)[:, None] + torch.arange(self.prompt_len, device=device)).reshape(-1)
        embeds = embeds.index_put((rows, cols), prompts.reshape(-1, prompts.shape[-1]).to(embeds.dtype))
        model = self.backbone.model
        # the backbone runs in its precision; what leaves it is fp32, as the heads read it
        if self.backbone.decoder:
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            with self.backbone.autocast():
                states = model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
            states = states.float()
            head = model.get_output_embeddings()
            # the answer projection in fp32: a (B x d)(d x 5) product, the head's whole input
            logits = states[:, -1] @ head.weight[self.answer_ids].T
            if getattr(head, "bias", None) is not None:
                logits = logits + head.bias[self.answer_ids]
            return self._with_prior(self._with_scoring(logits, states, mask, batch), batch)
        with self.backbone.autocast():
            hidden = model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        hidden = hidden.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self._with_prior(self._with_scoring(pooled, hidden, mask, batch), batch)

    def _with_scoring(self, features: Any, states: Any, mask: Any, batch: dict[str, Any]) -> Any:
        import torch

        if not self.scoring:
            return features
        start = batch["slot_start"].to(states.device)[:, None]
        at = torch.arange(states.shape[1], device=states.device)[None, :]
        in_slot = ((at >= start) & (at < start + self.prompt_len)).unsqueeze(-1).to(states.dtype)
        after = ((at >= start + self.prompt_len) & (mask > 0)).unsqueeze(-1).to(states.dtype)
        slot = (states * in_slot).sum(dim=1) / in_slot.sum(dim=1).clamp(min=1.0)
        item = (states * after).sum(dim=1) / after.sum(dim=1).clamp(min=1.0)
        return torch.cat([features, slot, item], dim=1)

    def _with_prior(self, features: Any, batch: dict[str, Any]) -> Any:
        import torch

        if not self.item_prior:
            return features
        return torch.cat([features, batch["prior"].to(features.device, features.dtype)[:, None]], dim=1)

"""Who a migration maps when its sources do not hold the same users, and with what inputs.

An aggregated migration (A + B -> C) reads one prompt per source per user. Users with a prompt in
only some sources ("partial") and users of the data set with none ("cold") need a stated policy:

- ``coverage="impute"`` (the default): every user with at least one source prompt is mapped; a
  missing source's input is that source's mean prompt (over the users who have one), and the map is
  fitted on inputs imputed the same way, so it learns to read them. With a linear map this is the
  best linear estimate under independence of the sources; the means are stored with the adapter, so
  a reuse imputes exactly as the fit did. Measured against a per-user fallback through the best
  single-source edge and against zero-filling in ``benchmarks/bench_coverage.py`` (see
  ``docs/coverage.md``).
- ``coverage="common"``: only users with a prompt in every source are mapped (the others are
  counted and listed, left to another route or a retrain).

``cold_start="centroid"`` gives each cold user the map of every source's mean prompt (the mapped
centroid) so that they start from the population's prompt instead of none; ``"skip"`` (default)
lists them and leaves them out of the set, to be retrained or trained when they arrive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from ..core.services import Services
from ..entities import PromptSet
from ..errors import InvalidArgumentError

POLICIES = ("impute", "common")
COLD_START = ("skip", "centroid")
MEAN_KEY = "coverage.mean.{}"  # adapter tensors holding each source's mean prompt (impute policy)
SAMPLE = 20  # users listed by name in summaries


@dataclasses.dataclass
class Coverage:
    """The users of a migration and how their sources cover them."""

    policy: str
    cold_start: str
    holders: list[set[str]]  # per source: its users
    mapped: list[str]  # every user the new set will hold (sorted; cold users last when given the centroid)
    partial: list[str]  # mapped users missing from some source
    cold: list[str]  # data users with no source prompt
    left_out: list[str]  # users with some source prompt that the policy does not map

    def summary(self) -> dict[str, Any]:
        full = len(self.mapped) - len(self.partial) - (len(self.cold) if self.cold_start == "centroid" else 0)
        return {"policy": self.policy, "cold_start": self.cold_start, "full": full, "partial": len(self.partial),
                "cold": len(self.cold), "left_out": len(self.left_out), "cold_sample": self.cold[:SAMPLE],
                "left_out_sample": self.left_out[:SAMPLE], "per_source": [len(h) for h in self.holders]}


def check(policy: str, cold_start: str) -> None:
    if policy not in POLICIES:
        raise InvalidArgumentError(f"unknown coverage policy {policy!r}; use one of {', '.join(POLICIES)}")
    if cold_start not in COLD_START:
        raise InvalidArgumentError(f"unknown cold_start {cold_start!r}; use one of {', '.join(COLD_START)}")


def plan_coverage(services: Services, sets: Sequence[PromptSet], policy: str, cold_start: str = "skip",
                  data_users: Sequence[str] | None = None, *, resolve: bool = True) -> Coverage:
    """Who is mapped under ``policy``; ``data_users`` (the data set's users) name the cold ones.
    ``resolve=False``: list the sources' users by name only (``Reads.list_set_users``), for a
    caller that then reads only a window of them (an apply shard)."""
    check(policy, cold_start)
    listed = [services.reads.list_set_users(s.id, resolve=resolve) for s in sets]  # each sorted
    holders = [set(users) for users in listed]
    union = set().union(*holders)
    common = set.intersection(*holders) if holders else set()
    if len(listed) == 1:
        mapped = list(listed[0])  # one source: its users, already sorted (sorting a 200,000-user set again took 0.06 s)
    else:
        mapped = sorted(union if policy == "impute" else common)
    partial = sorted(union - common) if policy == "impute" else []
    left_out = sorted(union - common) if policy == "common" else []
    cold = sorted(set(data_users) - union) if data_users is not None else []
    if cold_start == "centroid" and policy != "impute" and cold:
        raise InvalidArgumentError("cold_start='centroid' imputes every source of a cold user: it needs coverage='impute'")
    if cold_start == "centroid":
        mapped = mapped + cold
    return Coverage(policy, cold_start, holders, mapped, partial, cold, left_out)


def gather(services: Services, sets: Sequence[PromptSet], users: Sequence[str], holders: Sequence[set[str]],
           means: Sequence[torch.Tensor] | None, *, scan: bool = False, window: tuple[str, str] | None = None) -> list[torch.Tensor]:
    """One ``(len(users), prompt_len, width)`` table per source, in ``users`` order; a user missing
    from a source gets that source's mean prompt (``means``; None: every user must be in every source).
    ``scan``: the caller streams every user once (an apply), so the rows are not kept for rereads;
    ``window``: the first and last user of the caller's whole range (``Reads.get_prompts``)."""
    out = []
    for i, (s, have) in enumerate(zip(sets, holders)):
        if means is None:
            out.append(services.reads.get_prompts(users, set=s.id, scan=scan, window=window).float())
            continue
        table = means[i].float().expand(len(users), *means[i].shape).clone()
        rows = [j for j, u in enumerate(users) if u in have]
        if rows:
            table[rows] = services.reads.get_prompts([users[j] for j in rows], set=s.id, scan=scan, window=window).float()
        out.append(table)
    return out


def source_means(tables: Sequence[torch.Tensor], present: Sequence[Sequence[bool]]) -> list[torch.Tensor]:
    """Each source's mean prompt over the rows whose user has that source."""
    means = []
    for table, mask in zip(tables, present):
        rows = torch.tensor(list(mask), dtype=torch.bool)
        if not bool(rows.any()):
            raise InvalidArgumentError("a source set holds none of the migration's users")
        means.append(table[rows].mean(dim=0))
    return means


def stored_means(tensors: dict[str, torch.Tensor], n_sources: int) -> list[torch.Tensor] | None:
    """The means an adapter was fitted with (None: a ``common`` adapter), popped from ``tensors``."""
    keys = [MEAN_KEY.format(i) for i in range(n_sources)]
    if not all(k in tensors for k in keys):
        return None
    return [tensors.pop(k) for k in keys]


def candidate_tables(services: Services, sets: Sequence[PromptSet], users: Sequence[str],
                     holders: Sequence[set[str]]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The source tables of ``users`` and, when some user misses a source, every source's mean
    prompt over the users who have it (the missing rows hold that mean); None when all are covered."""
    if all(u in have for have in holders for u in users):
        return gather(services, sets, users, holders, None), None
    present = [[u in have for u in users] for have in holders]
    widths = [s.width for s in sets]
    zeros = [torch.zeros(sets[0].prompt_len, w) for w in widths]
    tables = gather(services, sets, users, holders, zeros)
    means = source_means(tables, present)
    for table, mask, mean in zip(tables, present, means):
        missing = torch.tensor([not p for p in mask], dtype=torch.bool)
        table[missing] = mean
    return tables, means

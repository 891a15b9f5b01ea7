"""The migration graph of one task, built from the catalogue on each call (NetworkX).

Nodes:

* every registered model, ``kind="model"``: its width, and the prompt set a migration would read
  (``production``, else the newest) with its user count and aliases, or none;
* ``SCRATCH`` (``kind="scratch"``): where a retrain starts;
* one node per *combination* of source models of a stored aggregated adapter (``kind="combo"``,
  named ``"A+B"``): an aggregated migration is a hyperedge from a set of sources, modelled as this
  bipartite node with ``member`` edges from each source, never as a chain.

Edges (a ``MultiDiGraph``; ``kind`` says which):

* ``reuse``: a stored adapter (from a model, or from a combination node), cost: mapping only;
* ``fit``: an adapter that a registered migration method could fit, between every ordered pair of
  distinct models (estimated when a plan is made: its cost depends on the users);
* ``retrain``: from ``SCRATCH`` to every model;
* ``member``: from each source model to a combination node.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from ..core.services import Services
from ..errors import NotFoundError
from ..migration.base import available_methods

SCRATCH = "<scratch>"


def combo_name(models: tuple[str, ...] | list[str]) -> str:
    return "+".join(models)


def build_graph(services: Services, task: str, *, methods: tuple[str, ...] | None = None) -> nx.MultiDiGraph:
    """The graph of ``task`` as the catalogue holds it now (see the module docstring)."""
    services.models.list_tasks()  # the task must exist: an unknown one fails in get_set below with its name
    graph: nx.MultiDiGraph = nx.MultiDiGraph(task=task)
    graph.add_node(SCRATCH, kind="scratch")
    aliases: dict[int, list[str]] = {}
    for alias in services.aliases.list_aliases(task=task):
        aliases.setdefault(alias.set_id, []).append(alias.name)
    models = services.models.list_models()
    for info in models:
        prompt_set = None
        for ref in (f"{info.name}/{task}@production", f"{info.name}/{task}@latest"):
            try:
                prompt_set = services.reads.get_set(ref)
                break
            except NotFoundError:
                continue
        graph.add_node(info.name, kind="model", width=info.hidden_size, fingerprint=info.fingerprint,
                       set_id=prompt_set.id if prompt_set else None, version=prompt_set.version if prompt_set else None,
                       users=prompt_set.n_users if prompt_set else 0, aliases=sorted(aliases.get(prompt_set.id, [])) if prompt_set else [])
        graph.add_edge(SCRATCH, info.name, key="retrain", kind="retrain")
    names = [m.name for m in models]
    for method in methods or available_methods():
        for a in names:
            for b in names:
                if a != b:
                    graph.add_edge(a, b, key=f"fit:{method}", kind="fit", method=method)
    for adapter in services.artifacts.list_artifacts(kind="adapter", task=task):
        sources = list(adapter.source_models)
        if not sources or adapter.target_model not in graph:
            continue
        start = sources[0]
        if len(sources) > 1:
            start = combo_name(sources)
            graph.add_node(start, kind="combo", members=sources)
            for member in sources:
                graph.add_edge(member, start, key="member", kind="member")
        graph.add_edge(start, adapter.target_model, key=f"adapter:{adapter.id}", kind="reuse", adapter_id=adapter.id,
                       method=adapter.config.get("method", "puma"), created_at=str(adapter.created_at))
    return graph


def describe(graph: nx.MultiDiGraph) -> dict[str, Any]:
    """The graph as JSON: nodes with their attributes, edges with theirs (``fit`` edges counted)."""
    nodes = [{"name": n, **data} for n, data in graph.nodes(data=True)]
    edges = [{"from": a, "to": b, **data} for a, b, data in graph.edges(data=True) if data["kind"] in ("reuse", "member")]
    fits = sum(1 for _, _, d in graph.edges(data=True) if d["kind"] == "fit")
    return {"task": graph.graph.get("task"), "nodes": nodes, "edges": edges, "possible_fit_edges": fits,
            "retrain_edges": sum(1 for _, _, d in graph.edges(data=True) if d["kind"] == "retrain")}


def to_dot(graph: nx.MultiDiGraph, highlight: list[tuple[str, str]] | None = None) -> str:
    """Graphviz text: models with users and aliases; stored adapters solid, combinations as
    diamonds, possible fits omitted (every pair has one), the ``highlight`` path in bold red."""
    chosen = set(highlight or [])
    lines = ["digraph migration {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for name, data in graph.nodes(data=True):
        if data["kind"] == "model":
            label = f"{name}\\nwidth {data['width']}\\n{data['users']} users" + (f"\\n@{', @'.join(data['aliases'])}" if data["aliases"] else "")
            lines.append(f'  "{name}" [label="{label}"{", style=filled, fillcolor=lightyellow" if data["users"] else ""}];')
        elif data["kind"] == "combo":
            lines.append(f'  "{name}" [shape=diamond, label="{name}"];')
    for a, b, data in graph.edges(data=True):
        if data["kind"] not in ("reuse", "member"):
            continue
        style = ', color=red, penwidth=2.5' if (a, b) in chosen else ""
        label = f'adapter {data["adapter_id"]}' if data["kind"] == "reuse" else ""
        lines.append(f'  "{a}" -> "{b}" [label="{label}"{style}];')
    for a, b in chosen:
        if not graph.has_edge(a, b) or all(d["kind"] not in ("reuse", "member") for d in graph.get_edge_data(a, b).values()):
            lines.append(f'  "{a}" -> "{b}" [label="fit", style=dashed, color=red, penwidth=2.5];')
    lines.append("}")
    return "\n".join(lines) + "\n"

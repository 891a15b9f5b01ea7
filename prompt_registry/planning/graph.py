"""The migration graph of one task, built from the catalogue on each call (NetworkX).

Nodes:

* every registered model, ``kind="model"``: its width, and the prompt set a migration would read
  (``production``, else the newest) with its user count and aliases, or none;
* ``SCRATCH`` (``kind="scratch"``): where a retrain starts;
* one node per *combination* of source models of a stored aggregated adapter (``kind="combo"``,
  named ``"A+B"``): an aggregated migration is a hyperedge from a set of sources, modelled as this
  bipartite node with ``member`` edges from each source, never as a chain.

Edges (a ``MultiDiGraph``; ``kind`` says which):

* ``reuse``: a stored adapter (from a model, or from a combination node), cost: mapping only; an
  adapter stored by a fit that failed, was killed or is still running is left out;
* ``fit``: an adapter that a registered migration method could fit, between every ordered pair of
  distinct models (estimated when a plan is made: its cost depends on the users);
* ``retrain``: from ``SCRATCH`` to every model;
* ``member``: from each source model to a combination node.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from .._util import echo
from ..core.services import Services
from ..errors import InvalidArgumentError, NotFoundError, UnknownTaskError
from ..migration.base import available_methods

SCRATCH = "<scratch>"


def combo_name(models: tuple[str, ...] | list[str]) -> str:
    return "+".join(models)


def build_graph(services: Services, task: str, *, methods: tuple[str, ...] | None = None) -> nx.MultiDiGraph:
    """The graph of ``task`` as the catalogue holds it now (see the module docstring)."""
    known = [t.name for t in services.models.list_tasks()]
    if task not in known:  # else every model's set lookup below fails as "not found" and the graph is silently empty
        raise UnknownTaskError(f"unknown task {echo(task)} (known: {', '.join(known) or 'none'}); "
                               "create it with `prompt-registry task add NAME --kind rating|click`")
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
        if adapter.run_id is not None and services.runs.get_run(adapter.run_id).status != "succeeded":
            continue  # stored by a fit that then failed or was killed (or is still running): not offered for reuse
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


MAX_DRAWN_FITS = 24  # possible fits drawn (dotted grey) up to this many; a bigger graph omits them


def possible_fits(graph: nx.MultiDiGraph) -> list[tuple[str, str]]:
    """Fit edges out of models that hold prompts, to models no stored adapter reaches from them:
    what a plan could fit. Empty when there are more than ``MAX_DRAWN_FITS`` (unreadable)."""
    stored = {(a, b) for a, b, d in graph.edges(data=True) if d["kind"] == "reuse"}
    out = sorted({(a, b) for a, b, d in graph.edges(data=True) if d["kind"] == "fit" and graph.nodes[a].get("users") and (a, b) not in stored})
    return out if len(out) <= MAX_DRAWN_FITS else []


def to_dot(graph: nx.MultiDiGraph, highlight: list[tuple[str, str]] | None = None) -> str:
    """Graphviz text: models with users and aliases; stored adapters solid, combinations as
    diamonds, possible fits from models with prompts dotted grey (up to ``MAX_DRAWN_FITS``), the
    ``highlight`` path in bold red."""
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
    for a, b in possible_fits(graph):
        if (a, b) not in chosen:
            lines.append(f'  "{a}" -> "{b}" [style=dotted, color=gray60, arrowsize=0.6];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_png(graph: nx.MultiDiGraph, path: str, highlight: list[tuple[str, str]] | None = None) -> None:
    """Draw the graph with matplotlib: models (filled when they hold prompts, with users and
    aliases), combinations as diamonds, stored adapters as solid arrows, the ``highlight`` path in
    red (a hop without a stored adapter, i.e. a fit, dashed), possible fits from models with
    prompts dotted grey (up to ``MAX_DRAWN_FITS``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidArgumentError("drawing a PNG needs matplotlib: `pip install matplotlib` (or use --dot)") from None
    chosen = list(highlight or [])
    shown: nx.DiGraph = nx.DiGraph()
    for name, data in graph.nodes(data=True):
        if data["kind"] in ("model", "combo"):
            shown.add_node(name, **data)
    stored = [(a, b) for a, b, d in graph.edges(data=True) if d["kind"] in ("reuse", "member")]
    shown.add_edges_from(stored)
    fits = [(a, b) for a, b in chosen if (a, b) not in stored and a in shown and b in shown]
    layout: dict[Any, Any] = nx.spring_layout(nx.Graph(list(shown.edges) + fits + [(n, n) for n in shown]), seed=0)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shown)), 5))
    models = [n for n, d in shown.nodes(data=True) if d["kind"] == "model"]
    labels = {n: f"{n}\n{shown.nodes[n]['users']} users" + (f"\n@{', @'.join(shown.nodes[n]['aliases'])}" if shown.nodes[n]["aliases"] else "")
              for n in models}
    labels |= {n: n for n, d in shown.nodes(data=True) if d["kind"] == "combo"}
    colors = ["#ffe9a8" if shown.nodes[n]["users"] else "#eeeeee" for n in models]
    nx.draw_networkx_nodes(shown, layout, nodelist=models, node_color=colors, node_shape="s", node_size=2600, edgecolors="#555555", ax=ax)
    combos = [n for n, d in shown.nodes(data=True) if d["kind"] == "combo"]
    nx.draw_networkx_nodes(shown, layout, nodelist=combos, node_color="#cfe3ff", node_shape="D", node_size=1200, ax=ax)
    plain = [e for e in stored if e not in chosen]
    nx.draw_networkx_edges(shown, layout, edgelist=plain, arrows=True, arrowsize=18, node_size=2600, ax=ax)
    nx.draw_networkx_edges(shown, layout, edgelist=[e for e in chosen if e in stored], edge_color="red", width=2.5, arrows=True, arrowsize=20,
                           node_size=2600, ax=ax)
    if fits:
        nx.draw_networkx_edges(nx.DiGraph(fits), layout, edgelist=fits, edge_color="red", style="dashed", width=2.5, arrows=True, arrowsize=20,
                               node_size=2600, ax=ax)
    maybe = [e for e in possible_fits(graph) if e not in chosen and e not in fits]
    if maybe:
        nx.draw_networkx_edges(nx.DiGraph(maybe), layout, edgelist=maybe, edge_color="#aaaaaa", style="dotted", width=1.0, arrows=True,
                               arrowsize=10, node_size=2600, ax=ax, connectionstyle="arc3,rad=0.15")
    nx.draw_networkx_labels(shown, layout, labels=labels, font_size=8, ax=ax)
    edge_labels = {(a, b): f"adapter {d['adapter_id']}" for a, b, d in graph.edges(data=True) if d["kind"] == "reuse"}
    edge_labels |= {e: "fit" for e in fits}
    nx.draw_networkx_edge_labels(shown, layout, edge_labels=edge_labels, font_size=7, ax=ax)
    ax.set_title(f"migration graph of task {graph.graph.get('task')!r}\nsolid = stored adapter, dotted grey = a possible fit, "
                 "red = plan (dashed: a fit)", fontsize=9)
    ax.margins(0.12)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Inline SVG for the pages: the lineage graph, the quality-vs-cost chart, the alias timeline.

Drawn here, server-side, from the views' dicts: no JavaScript library, no CDN. Every mark carries
``data-*`` attributes (set id, method) so tests and people can tell what it is.
"""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import Any

NODE_W, NODE_H, COL_GAP, ROW_GAP = 250, 46, 70, 22
COLORS = {"retrain": "#1b7f3b", "random-init": "#9a9a9a", "imported": "#6b5bd2"}
PALETTE = ("#1f6fd1", "#d1641f", "#b8329b", "#0f9c9c", "#8a6d00", "#c0392b")


def _text(x: float, y: float, body: str, *, size: int = 12, anchor: str = "start", cls: str = "", weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}"'
            f'{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{escape(body)}</text>')


def lineage(up: dict[str, Any], down: dict[str, Any], link: str = "/sets/{id}") -> str:
    """Ancestors to the left, the set in the middle (depth 0), descendants to the right; an arrow
    from each parent to its child, labelled by role (base, source)."""
    nodes: dict[int, tuple[int, dict[str, Any]]] = {}
    for n in up["nodes"]:
        nodes[n["set_id"]] = (-n["depth"], n)
    for n in down["nodes"]:
        nodes.setdefault(n["set_id"], (n["depth"], n))
    columns: dict[int, list[int]] = {}
    for set_id, (col, _) in sorted(nodes.items(), key=lambda kv: (kv[1][0], kv[0])):
        columns.setdefault(col, []).append(set_id)
    first = min(columns) if columns else 0
    tallest = max((len(v) for v in columns.values()), default=1)
    width = (len(columns) or 1) * (NODE_W + COL_GAP) + 20
    height = tallest * (NODE_H + ROW_GAP) + 30
    at: dict[int, tuple[float, float]] = {}
    for col, ids in columns.items():
        x = 10 + (col - first) * (NODE_W + COL_GAP)
        offset = (height - len(ids) * (NODE_H + ROW_GAP)) / 2
        for row, set_id in enumerate(ids):
            at[set_id] = (x, offset + row * (NODE_H + ROW_GAP))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
             '<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    seen: set[tuple[int, int]] = set()
    for edge in [*up["edges"], *down["edges"]]:
        key = (edge["parent_id"], edge["child_id"])
        if key in seen or edge["parent_id"] not in at or edge["child_id"] not in at:
            continue
        seen.add(key)
        (px, py), (cx, cy) = at[edge["parent_id"]], at[edge["child_id"]]
        x1, y1, x2, y2 = px + NODE_W, py + NODE_H / 2, cx, cy + NODE_H / 2
        parts.append(f'<line class="edge" data-parent="{edge["parent_id"]}" data-child="{edge["child_id"]}" x1="{x1:.1f}" y1="{y1:.1f}" '
                     f'x2="{x2 - 2:.1f}" y2="{y2:.1f}" stroke="#555" stroke-width="1.4" marker-end="url(#arrow)"/>')
        parts.append(_text((x1 + x2) / 2, (y1 + y2) / 2 - 4, edge["role"], size=10, anchor="middle", cls="edge-role"))
    for set_id, (col, n) in nodes.items():
        nx, ny = at[set_id]
        ref = f'{n["model"]}/{n["task"]}@v{n["version"]}'
        made = n["run_kind"] or "import"
        if n.get("adapter"):
            made += f' · {n["adapter"]}'
        fill = "#fff4d6" if col == 0 else ("#eef3fb" if n["status"] == "active" else "#f3f3f3")
        parts.append(f'<a href="{escape(link.format(id=set_id))}"><g class="node{" focus" if col == 0 else ""}" data-set-id="{set_id}" '
                     f'data-ref="{escape(ref)}"><rect x="{nx:.1f}" y="{ny:.1f}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" '
                     f'stroke="{"#c08a00" if col == 0 else "#7a8aa6"}"/>')
        parts.append(_text(nx + 8, ny + 18, f"{ref}  (set {set_id})", weight="bold"))
        second = f'{made} · {n["n_users"]:,} users'
        parts.append(_text(nx + 8, ny + 35, second if len(second) <= 40 else second[:39] + "…", size=11))
        parts.append("</g></a>")
    parts.append("</svg>")
    return "".join(parts)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= n:
            step *= mult
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def quality_cost(points: list[dict[str, Any]], *, width: int = 760, height: int = 380) -> str:
    """One point per set: x = token passes of the run that made it (log scale), y = its test
    metric; the retrain green, random-init grey, this migration's sets ringed."""
    left, right, top, bottom = 70, 150, 20, 50  # room on the right for the last point's label
    usable = [p for p in points if p.get("value") is not None]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="#fbfbfb" stroke="#ccc"/>']
    if not usable:
        parts.append(_text(width / 2, height / 2, "no evaluated sets yet", anchor="middle"))
        return "".join(parts) + "</svg>"
    xs = [math.log10(1 + p["token_passes"]) for p in usable]
    ys = [float(p["value"]) for p in usable]
    x_lo, x_hi = float(math.floor(min(xs))), float(max(math.ceil(max(xs)), math.floor(min(xs)) + 1))
    pad = (max(ys) - min(ys)) * 0.1 or 0.05
    y_lo, y_hi = min(ys) - pad, max(ys) + pad

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (width - left - right)

    def sy(v: float) -> float:
        return top + (y_hi - v) / (y_hi - y_lo) * (height - top - bottom)

    for t in range(int(x_lo), int(x_hi) + 1):
        parts.append(f'<line x1="{sx(t):.1f}" y1="{height - bottom}" x2="{sx(t):.1f}" y2="{height - bottom + 5}" stroke="#555"/>')
        parts.append(_text(sx(t), height - bottom + 18, "0" if t == 0 else f"1e{t}", size=10, anchor="middle"))
    for tick in _ticks(y_lo, y_hi):
        parts.append(f'<line x1="{left - 5}" y1="{sy(tick):.1f}" x2="{left}" y2="{sy(tick):.1f}" stroke="#555"/>')
        parts.append(_text(left - 8, sy(tick) + 4, f"{tick:.3g}", size=10, anchor="end"))
    metric = usable[0]["metric"]
    parts.append(_text((left + width - right) / 2, height - 10, "cost: token passes of the run that made the set (log scale)", size=11, anchor="middle"))
    parts.append(f'<text x="16" y="{(top + height - bottom) / 2:.0f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 16 {(top + height - bottom) / 2:.0f})">{escape(metric)} (test)</text>')
    methods = sorted({p["method"] for p in usable})
    colors = {m: COLORS.get(m, PALETTE[i % len(PALETTE)]) for i, m in enumerate(methods)}
    for p, x, y in zip(usable, xs, ys):
        ring = ' stroke="#000" stroke-width="2"' if p.get("this_migration") else ' stroke="#fff"'
        parts.append(f'<circle class="point" data-method="{escape(p["method"])}" data-set-id="{p["set_id"]}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" '
                     f'r="6" fill="{colors[p["method"]]}"{ring}><title>{escape(p["ref"])}: {escape(p["method"])}, {metric} {y:.4f}, '
                     f'{p["token_passes"]:,} token passes</title></circle>')
        parts.append(_text(sx(x) + 9, sy(y) + 4, f'{p["method"]} (v{p["ref"].rsplit("@v", 1)[-1]})', size=10))
    parts.append("</svg>")
    return "".join(parts)


def _parse(value: str | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.timezone.utc)
    t = dt.datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def timeline(moves: list[dict[str, Any]], *, width: int = 760) -> str:
    """One bar per move, on a time axis from the first move to now, labelled with the version it
    pointed at (a deletion leaves a gap)."""
    row_h, left = 26, 10
    height = max(1, len(moves)) * row_h + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    if not moves:
        return "".join(parts) + _text(20, 24, "this alias never moved") + "</svg>"
    start, end = _parse(moves[0]["at"]), dt.datetime.now(dt.timezone.utc)
    span = max((end - start).total_seconds(), 1.0)

    def sx(t: dt.datetime) -> float:
        return left + (t - start).total_seconds() / span * (width - 2 * left - 150)

    for i, m in enumerate(moves):
        y = 10 + i * row_h
        a, b = sx(_parse(m["at"])), sx(_parse(m["until"]))
        label = "deleted" if m["new_set_id"] is None else f'v{m["new_version"]} (set {m["new_set_id"]})'
        if m["new_set_id"] is not None:
            parts.append(f'<rect class="move" data-move="{i}" data-set-id="{m["new_set_id"]}" x="{a:.1f}" y="{y}" width="{max(b - a, 2):.1f}" '
                         f'height="{row_h - 8}" rx="3" fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(label)} from {escape(m["at"])}</title></rect>')
        parts.append(_text(max(a, b) + 6, y + 13, label, size=11))
    parts.append(f'<line x1="{left}" y1="{height - 22}" x2="{width - 150}" y2="{height - 22}" stroke="#555"/>')
    parts.append(_text(left, height - 6, start.strftime("%Y-%m-%d %H:%M:%S"), size=10))
    parts.append(_text(width - 150, height - 6, "now", size=10, anchor="end"))
    return "".join(parts) + "</svg>"

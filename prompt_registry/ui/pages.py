"""Server-rendered HTML pages over the views (``ui.views``); the charts are inline SVG (``ui.svg``).

No build step, no JavaScript framework, nothing from a CDN: one stylesheet, served from here.
Every value from the catalogue is escaped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from . import svg

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2a44;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:baseline}
header a{color:#cfe0ff;text-decoration:none} header .brand{font-weight:700;color:#fff;font-size:18px}
main{padding:18px 24px;max-width:1200px} h1{font-size:22px;margin:6px 0 14px} h2{font-size:17px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top} th{background:#eef1f6}
td.num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#6b7385} .card{background:#fff;border:1px solid #dde1e8;
border-radius:6px;padding:10px 14px;display:inline-block;margin:0 10px 10px 0;min-width:110px}
.card b{display:block;font-size:22px} .status-succeeded,.status-done,.status-active,.status-committed{color:#1b7f3b}
.status-failed,.status-deleted,.status-purged{color:#b3261e} .status-running,.status-planned{color:#8a6d00}
code,pre{background:#eef1f6;border-radius:3px;padding:1px 4px;font-size:12px} pre{padding:8px;overflow:auto;max-height:320px}
svg{background:#fff;border:1px solid #dde1e8;border-radius:6px;max-width:100%;height:auto}
"""


def link(href: str, text: Any) -> str:
    return f'<a href="{escape(href)}">{escape(str(text))}</a>'


def set_link(set_id: int | None, text: Any = None) -> str:
    return "—" if set_id is None else link(f"/sets/{set_id}", text if text is not None else f"set {set_id}")


def alias_href(name: str, model: str | None, task: str | None) -> str:
    query = urlencode({k: v for k, v in (("model", model), ("task", task)) if v})
    return f"/aliases/{quote(name, safe='')}" + (f"?{query}" if query else "")


_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(\+00:00|Z)?$")


def when(value: Any) -> str:
    """An ISO timestamp to the second (UTC), anything else as text."""
    text = str(value)
    m = _ISO.match(text)
    return f"{m.group(1)} {m.group(2)}" if m else text


def cell(value: Any) -> str:
    if value is None:
        return '<td class="muted">—</td>'
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, (int, float)):
        return f'<td class="num">{value:,.4g}</td>' if isinstance(value, float) else f'<td class="num">{value:,}</td>'
    if isinstance(value, Raw):
        return f"<td>{value.html}</td>"
    return f"<td>{escape(when(value))}</td>"


class Raw:
    """HTML that is already safe (a link built here)."""

    def __init__(self, html: str) -> None:
        self.html = html


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "", row_cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(f'<tr{f" class={chr(34)}{row_cls}{chr(34)}" if row_cls else ""}>' + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f'<table{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def status(value: str | None) -> Raw:
    return Raw(f'<span class="status-{escape(str(value))}">{escape(str(value))}</span>')


def layout(title: str, body: str) -> str:
    nav = " ".join(link(h, t) for h, t in (("/", "overview"), ("/sets", "sets"), ("/runs", "runs"), ("/runs?kind=migrate", "migrations"),
                                           ("/plans", "plans")))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · prompt-registry</title>'
            f'<link rel="stylesheet" href="/static/style.css"></head><body><header><span class="brand">prompt-registry</span>{nav}'
            f'<span class="muted">read-only</span></header><main><h1>{escape(title)}</h1>{body}</main></body></html>')


def _pager(base: str, data: dict[str, Any], params: dict[str, Any]) -> str:
    total, limit, offset = data["total"], data["limit"], data["offset"]
    out = [f'<p class="muted">{min(offset + 1, total):,}–{min(offset + limit, total):,} of {total:,}</p>']
    if offset > 0:
        out.append(link(f"{base}?{urlencode({**params, 'offset': max(0, offset - limit), 'limit': limit})}", "« previous") + " ")
    if offset + limit < total:
        out.append(link(f"{base}?{urlencode({**params, 'offset': offset + limit, 'limit': limit})}", "next »"))
    return "".join(out)


# -- pages --------------------------------------------------------------------------------------
def overview(v: dict[str, Any]) -> str:
    c = v["counts"]
    cards = "".join(f'<div class="card"><span class="muted">{k}</span><b>{n:,}</b></div>' for k, n in
                    (("models", len(v["models"])), ("tasks", len(v["tasks"])), ("users", c["users"]), ("sets", c["sets"]), ("runs", c["runs"])))
    models = table(["model", "architecture", "width", "fingerprint", "registered"],
                   [(Raw(link(f"/sets?model={quote(m['name'])}", m["name"])), m["architecture"], m["hidden_size"], m["fingerprint"][:12],
                     m["created_at"]) for m in v["models"]], cls="models")
    tasks = table(["task", "kind"], [(t["name"], t["kind"]) for t in v["tasks"]], cls="tasks")
    aliases = table(["alias", "model", "task", "points at", "since", "by"],
                    [(Raw(link(alias_href(a["name"], a["model"], a["task"]), a["name"])), a["model"], a["task"], Raw(set_link(a["set_id"])),
                      a["updated_at"], a["updated_by"]) for a in v["aliases"]], cls="aliases")
    pairs = table(["model/task", "versions"], [(Raw(link("/sets?" + urlencode(dict(zip(("model", "task"), k.split("/", 1)))), k)), n)
                                               for k, n in sorted(c["sets_by_model_task"].items())])
    plans = table(["plan", "task", "target", "kind", "status", "steps"],
                  [(Raw(link(f"/plans/{p['id']}", f"plan {p['id']}")), p["task"], p["target"], p["kind"], status(p["status"]), len(p["steps"]))
                   for p in v["plans"]], cls="plans")
    return layout("Overview", f"{cards}<h2>Models</h2>{models}<h2>Tasks</h2>{tasks}<h2>Versions</h2>{pairs}<h2>Aliases</h2>{aliases}"
                              f"<h2>Plans</h2>{plans}")


def sets(v: dict[str, Any], params: dict[str, Any]) -> str:
    rows = [(Raw(set_link(s["id"], f"{s['model']}/{s['task']}@v{s['version']}")), s["id"], status(s["status"]), s["n_users"], s["n_rows"],
             s["dtype"], ", ".join(s["aliases"]) or None, ", ".join(f"{k}={v}" if v else k for k, v in s["tags"].items()) or None,
             s["created_at"]) for s in v["items"]]
    filters = ", ".join(f"{k}={val}" for k, val in params.items() if val) or "none"
    return layout("Sets", f'<p class="muted">filters: {escape(filters)}</p>' + _pager("/sets", v, params)
                  + table(["version", "set", "status", "users", "rows", "dtype", "aliases", "tags", "created"], rows, cls="sets", row_cls="set-row"))


def set_page(v: dict[str, Any]) -> str:
    s = v["set"]
    facts = table(["field", "value"], [
        ("set", s["id"]), ("model / task", f"{s['model']} / {s['task']}"), ("version", s["version"]), ("status", status(s["status"])),
        ("users / rows", f"{s['n_users']:,} / {s['n_rows']:,}"), ("prompt", f"{s['prompt_len']} x {s['width']} {s['dtype']}"),
        ("base", Raw(set_link(s["base_id"]))), ("made by run", Raw(link(f"/runs/{s['run_id']}", f"run {s['run_id']}")) if s["run_id"] else None),
        ("adapter", s["adapter_id"]), ("head artifact", s["head_id"]),
        ("aliases", Raw(", ".join(link(alias_href(a, s["model"], s["task"]), a) for a in s["aliases"])) if s["aliases"] else None),
        ("tags", ", ".join(f"{k}={val}" if val else k for k, val in s["tags"].items()) or None), ("note", s["note"]),
        ("created", f"{when(s['created_at'])} by {s['created_by']}")], cls="facts")
    graph = svg.lineage(v["lineage_up"], v["lineage_down"])
    evals = table(["evaluation", "dataset", "split", "metrics", "created"],
                  [(e["id"], e["dataset"], e["split"], ", ".join(f"{k} {val:.4g}" for k, val in e["metrics"].items() if isinstance(val, (int, float))),
                    e["created_at"]) for e in v["evaluations"]], cls="evaluations")
    run = v["run"]
    ledger = "" if run is None else ("<h2>Cost of the run that made it</h2>" + _ledger(run))
    return layout(v["ref"], f"{facts}<h2>Lineage</h2><p class='muted'>what it came from (left) and what came from it (right)</p>{graph}"
                            f"<h2>Evaluations</h2>{evals}{ledger}")


def _ledger(run: dict[str, Any]) -> str:
    return table(["run", "kind", "status", "wall s", "device", "examples", "forward tokens", "backward tokens"],
                 [(Raw(link(f"/runs/{run['id']}", run["id"])), run["kind"], status(run["status"]), run["wall_seconds"], run["device"],
                   run["examples_seen"], run["forward_tokens"], run["backward_tokens"])], cls="ledger")


def alias_page(v: dict[str, Any]) -> str:
    moves = v["moves"]
    rows = [(i + 1, m["model"], m["task"], Raw(set_link(m["old_set_id"], f"v{m['old_version']}")) if m["old_set_id"] else None,
             Raw(set_link(m["new_set_id"], f"v{m['new_version']}")) if m["new_set_id"] else "deleted", m["at"], m["until"] or "now",
             m["actor"], m["reason"]) for i, m in enumerate(moves)]
    where = " ".join(x for x in (v["model"], v["task"]) if x)
    return layout(f"Alias {v['name']}" + (f" ({where})" if where else ""),
                  svg.timeline(moves) + "<h2>Every move, oldest first</h2>"
                  + table(["#", "model", "task", "from", "to", "at", "until", "by", "reason"], rows, cls="moves", row_cls="move-row"))


def runs_page(v: dict[str, Any], params: dict[str, Any]) -> str:
    rows = [(Raw(link(f"/migrations/{r['id']}" if r["kind"] == "migrate" else f"/runs/{r['id']}", r["id"])), r["kind"], status(r["status"]),
             r["model"], r["task"], r["wall_seconds"], r["device"], r["examples_seen"], (r["forward_tokens"] or 0) + (r["backward_tokens"] or 0),
             r["started_at"], r["actor"]) for r in v["items"]]
    return layout("Runs" + (f" ({params['kind']})" if params.get("kind") else ""), _pager("/runs", v, params) + table(
        ["run", "kind", "status", "model", "task", "wall s", "device", "examples", "token passes", "started", "by"], rows, cls="runs"))


def run_page(r: dict[str, Any]) -> str:
    config = json.dumps(r["config"], indent=1, default=str)
    if len(config) > 20_000:
        config = config[:20_000] + "\n…"
    extra = link(f"/migrations/{r['id']}", "the migration page") if r["kind"] == "migrate" else ""
    results = json.dumps(r["cost"], indent=1, default=str)[:20_000]
    return layout(f"Run {r['id']} ({r['kind']})", _ledger(r) + (f"<p>{extra}</p>" if extra else "")
                  + (f"<p>error: {escape(r['error'])}</p>" if r["error"] else "")
                  + f"<h2>Configuration</h2><pre>{escape(config)}</pre><h2>Results</h2><pre>{escape(results)}</pre>")


def migration_page(v: dict[str, Any]) -> str:
    r = v["run"]
    sources = ", ".join(f"{s['model']} (set {s['set_id']})" for s in v["sources"])
    made = " ".join(set_link(i) for i in v["sets"]) or "—"
    points = table(["set", "method", "metric", "value", "token passes", "wall s", "this migration"],
                   [(Raw(set_link(p["set_id"], p["ref"])), p["method"], p["metric"], p["value"], p["token_passes"], p["wall_seconds"],
                     p["this_migration"]) for p in v["points"]], cls="points", row_cls="point-row")
    rep = v.get("report")
    summary = "" if rep is None else "<h2>Report</h2>" + table(
        ["set", "metric", "all users", "seen (fitted on)", "unseen", "retrain", "random-init", "retrain's gain recovered", "users worse than retrain"],
        [(Raw(set_link(rep["set_id"])), rep["metric"], rep["value"], rep["seen"], rep["unseen"], rep["retrain"], rep["random_init"],
          None if rep["recovered"] is None else f"{rep['recovered']:.0%}",
          None if rep["share_worse_than_retrain"] is None else f"{rep['share_worse_than_retrain']:.0%}")], cls="report")
    return layout(f"Migration run {r['id']}: {sources} → {r['model']} ({r['task']})",
                  _ledger(r) + f"<p>sets made: {made}; {v['selected_users']:,} users selected to fit the adapter</p>" + summary
                  + "<h2>Quality against cost</h2><p class='muted'>every set of the target model and task with a test evaluation; "
                  "ringed: this migration's</p>" + svg.quality_cost(v["points"]) + points)


def plans_page(items: list[dict[str, Any]]) -> str:
    return layout("Plans", table(["plan", "task", "target", "strategy", "kind", "status", "steps", "created"],
                                 [(Raw(link(f"/plans/{p['id']}", p["id"])), p["task"], p["target"], p["strategy"], p["kind"], status(p["status"]),
                                   len(p["steps"]), p["created_at"]) for p in items], cls="plans"))


def plan_page(p: dict[str, Any]) -> str:
    steps = table(["#", "kind", "sources", "target", "method", "adapter", "status", "run", "result"],
                  [(s["position"], s["kind"], ", ".join(map(str, s["sources"])), s["target"], s["method"], s["adapter_id"], status(s["status"]),
                    Raw(link(f"/runs/{s['run_id']}", s["run_id"])) if s["run_id"] else None,
                    json.dumps(s["result"], default=str)[:300] if s["result"] else None) for s in p["steps"]], cls="steps", row_cls="step-row")
    estimate = ", ".join(f"{k}: {val}" for k, val in p["estimate"].items() if not isinstance(val, (list, dict)))
    return layout(f"Plan {p['id']}: {p['kind']} to {p['target']} ({p['task']})",
                  f"<p>status {status(p['status']).html}; strategy {escape(p['strategy'])}; estimate: {escape(estimate)}</p>{steps}")


def user_page(v: dict[str, Any]) -> str:
    h = v["history"]
    state = '<span class="status-purged">purged</span> at ' + escape(str(h["deleted_at"])) if v["purged"] else "active"
    rows = [(Raw(set_link(u["set_id"], f"{u['model']}/{u['task']}@v{u['version']}")), status(u["status"]),
             "inherited from " + str(u["holder_id"]) if u["inherited"] else "written here", u["row_sha256"][:12], u["run_kind"],
             Raw("<br>".join(f"{escape(a['name'])}: {escape(when(a['since']))} → {escape(when(a['until'] or 'now'))}" for a in u["aliases"]))
             if u["aliases"] else None) for u in h["versions"]]
    events = table(["at", "action", "by", "reason"], [(e["at"], e["action"], e["actor"], e["reason"]) for e in v["events"]], cls="events")
    return layout(f"User {h['user']}", f"<p>registered {escape(when(h['created_at']))}; {state}</p><h2>Every version of this user's prompt</h2>"
                  + table(["version", "status", "row", "sha256", "made by", "served by (alias windows)"], rows, cls="versions", row_cls="version-row")
                  + f"<h2>Audit events</h2>{events}")


def error_page(status_code: int, message: str) -> str:
    return layout(f"Error {status_code}", f"<p>{escape(message)}</p>")

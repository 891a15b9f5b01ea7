"""The read-only web UI and JSON API (``prompt-registry ui``): Starlette, served by uvicorn.

Every route is a GET over one view of ``ui.views`` (which calls only the public ``Registry`` API):
``/api/...`` returns it as JSON, the page of the same name renders it. There is no write route;
any other method is answered 405. Library errors come back as JSON ``{"error", "type"}`` (the
library's own message) with 404 for what does not exist and 400 for bad input.

Binding loopback needs nothing; binding any other address needs a token, and then every request
must carry it: ``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` once (the server then sets
a cookie, so the pages' links work).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import InvalidArgumentError, NotFoundError, PromptRegistryError
from ..registry import Registry
from . import pages, views

COOKIE = "prompt_registry_token"
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a bind the UI must not make: a non-loopback address without a token; a bad token."""
    if not host or any(ord(c) < 33 or ord(c) > 126 for c in host) or len(host) > 253:
        raise InvalidArgumentError(f"--host {host[:40]!r} is not a host name or address")
    if token is not None and (len(token) < 16 or len(token) > 512 or any(ord(c) < 33 or ord(c) > 126 for c in token)):
        raise InvalidArgumentError("--token must be 16 to 512 printable ASCII characters without spaces (e.g. `openssl rand -hex 24`)")
    if not is_loopback(host) and token is None:
        raise InvalidArgumentError(f"binding {host} (not loopback) serves the registry to the network: give --token, and every request "
                                   "must then carry it (Authorization: Bearer TOKEN)")


def _status(exc: PromptRegistryError) -> int:
    return 404 if isinstance(exc, NotFoundError) else 400


def _int(request: Any, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgumentError(f"query parameter {name}={raw[:40]!r} is not an integer") from None


def create_app(registry: Registry, *, token: str | None = None) -> Any:
    """The Starlette application over ``registry`` (read-only); ``token``: required on every request."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    reg = registry

    def q(request: Request, name: str) -> str | None:
        return request.query_params.get(name) or None

    def listing(request: Request) -> dict[str, Any]:
        return {"limit": _int(request, "limit", 100), "offset": _int(request, "offset", 0)}

    # name -> (JSON route, page route or None, view(request) -> data, render(data, request) -> html)
    def v_overview(r: Request) -> Any:
        return views.overview(reg)

    def v_models(r: Request) -> Any:
        return [m.to_dict() for m in reg.list_models()]

    def v_tasks(r: Request) -> Any:
        return [t.to_dict() for t in reg.list_tasks()]

    def v_sets(r: Request) -> Any:
        return views.sets(reg, model=q(r, "model"), task=q(r, "task"), alias=q(r, "alias"), tag=q(r, "tag"), **listing(r))

    def v_set(r: Request) -> Any:
        return views.set_detail(reg, r.path_params["ref"])

    def v_aliases(r: Request) -> Any:
        return [a.to_dict() for a in reg.list_aliases(model=q(r, "model"), task=q(r, "task"))]

    def v_alias(r: Request) -> Any:
        return views.alias_history(reg, r.path_params["name"], model=q(r, "model"), task=q(r, "task"))

    def v_users(r: Request) -> Any:
        return views.users(reg, **listing(r))

    def v_user(r: Request) -> Any:
        return views.user_audit(reg, r.path_params["user"])

    def v_runs(r: Request) -> Any:
        return views.runs(reg, kind=q(r, "kind"), **listing(r))

    def v_run(r: Request) -> Any:
        return views.run(reg, _path_int(r, "run_id"))

    def v_migration(r: Request) -> Any:
        return views.migration(reg, _path_int(r, "run_id"))

    def v_evaluations(r: Request) -> Any:
        return views.evaluations(reg, ref=q(r, "set"), split=q(r, "split"))

    def v_plans(r: Request) -> Any:
        return views.plans(reg, task=q(r, "task"), target=q(r, "target"), limit=_int(r, "limit", 100))

    def v_plan(r: Request) -> Any:
        return views.plan(reg, _path_int(r, "plan_id"))

    def _path_int(r: Request, name: str) -> int:
        raw = r.path_params[name]
        if not raw.isdigit():
            raise InvalidArgumentError(f"{name.replace('_', ' ')} {raw[:40]!r} is not a number")
        return int(raw)

    def params(r: Request, *names: str) -> dict[str, Any]:
        return {n: r.query_params[n] for n in names if r.query_params.get(n)}

    routes_spec: list[tuple[str, str | None, Callable[[Request], Any], Callable[[Any, Request], str] | None]] = [
        ("/api/overview", "/", v_overview, lambda d, r: pages.overview(d)),
        ("/api/models", None, v_models, None),
        ("/api/tasks", None, v_tasks, None),
        ("/api/sets", "/sets", v_sets, lambda d, r: pages.sets(d, params(r, "model", "task", "alias", "tag"))),
        ("/api/sets/{ref:path}", "/sets/{ref:path}", v_set, lambda d, r: pages.set_page(d)),
        ("/api/aliases", None, v_aliases, None),
        ("/api/aliases/{name}/history", "/aliases/{name}", v_alias, lambda d, r: pages.alias_page(d)),
        ("/api/users", None, v_users, None),
        ("/api/users/{user:path}/audit", "/users/{user:path}", v_user, lambda d, r: pages.user_page(d)),
        ("/api/runs", "/runs", v_runs, lambda d, r: pages.runs_page(d, params(r, "kind"))),
        ("/api/runs/{run_id}", "/runs/{run_id}", v_run, lambda d, r: pages.run_page(d)),
        ("/api/migrations/{run_id}", "/migrations/{run_id}", v_migration, lambda d, r: pages.migration_page(d)),
        ("/api/evaluations", None, v_evaluations, None),
        ("/api/plans", "/plans", v_plans, lambda d, r: pages.plans_page(d)),
        ("/api/plans/{plan_id}", "/plans/{plan_id}", v_plan, lambda d, r: pages.plan_page(d)),
    ]

    def json_endpoint(view: Callable[[Request], Any]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                data = view(request)
            except PromptRegistryError as exc:
                return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=_status(exc))
            return Response(json.dumps(data, default=str), media_type="application/json")
        return endpoint

    def page_endpoint(view: Callable[[Request], Any], render: Callable[[Any, Request], str]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                return HTMLResponse(render(view(request), request))
            except PromptRegistryError as exc:
                return HTMLResponse(pages.error_page(_status(exc), str(exc)), status_code=_status(exc))
        return endpoint

    def css(request: Request) -> Response:
        return Response(pages.CSS, media_type="text/css")

    def api_unknown(request: Request) -> Response:
        return JSONResponse({"error": f"no API route {request.url.path}; see /api/overview", "type": "NotFoundError"}, status_code=404)

    routes = [Route("/static/style.css", css, methods=["GET"])]
    for api_path, page_path, view, render in routes_spec:
        routes.append(Route(api_path, json_endpoint(view), methods=["GET"]))
        if page_path is not None and render is not None:
            routes.append(Route(page_path, page_endpoint(view, render), methods=["GET"]))
    routes.append(Route("/api/{rest:path}", api_unknown, methods=["GET"]))

    class TokenGate(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if token is None:
                return await call_next(request)
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token") or request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"error": "this registry UI needs its token: send Authorization: Bearer TOKEN (or open ?token=TOKEN once)",
                                     "type": "Unauthorized"}, status_code=401)
            response = await call_next(request)
            if request.query_params.get("token"):
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response

    return Starlette(routes=routes, middleware=[Middleware(TokenGate)])


def serve(registry: Registry, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          ready: Callable[[str], None] | None = None) -> None:
    """Serve the UI until interrupted (``ready`` is called with the URL once it listens)."""
    import uvicorn

    check_bind(host, token)
    app = create_app(registry, token=token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if ready is not None:
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            ready(url)

        server.startup = startup  # type: ignore[method-assign]
    server.run()

"""The HTTP API of ``attribution serve`` (FastAPI on uvicorn): tallies, web-push subscriptions,
conversions, an event stream of their changes, the live page, health and metrics. Answers are the
records the workers published, joined as bytes: what the API says equals the topics' latest records."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

from attribution import __version__, contract
from attribution.api.metrics import ApiMetrics
from attribution.api.table import Change, ResultTable
from attribution.infra.http import HEALTH_PATH, METRICS_PATH, READY_PATH

COOKIE = "attribution_token"
COOKIE_MAX_AGE_S = 12 * 3600  # the page's login lasts a working day
STREAM_QUEUE = 10_000  # changes buffered per event-stream client; a slower client is dropped
Id = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f]+$")]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _schema(name: str) -> dict[str, Any]:
    doc = contract.schema(name)
    doc.pop("$schema", None)
    doc.pop("$id", None)
    return doc


def create_app(
    table: ResultTable,
    metrics: ApiMetrics,
    caught_up: Callable[[], bool],
    alive: Callable[[], bool],
    token: str | None = None,
) -> FastAPI:
    """The ASGI app over ``table``; ``token`` (when set) is required for the data and the stream."""
    app = FastAPI(
        title="attribution serve",
        version=__version__,
        description="Per-campaign tallies, per-project web-push subscriptions and conversions, read from "
        "the engine's output topics.",
        docs_url="/docs",
        redoc_url=None,
    )
    page = resources.files("attribution.api").joinpath("static/index.html").read_bytes()

    def authorize(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "a bearer token is required (Authorization: Bearer <ATTRIBUTION_API_TOKEN>)")

    def ready() -> None:
        if not alive():
            raise ApiError(503, "the topic reader stopped (see the log); the data would be frozen")
        if not caught_up():
            raise ApiError(503, "catching up with the output topics; try again shortly")

    data = [Depends(authorize), Depends(ready)]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        code = 500  # an exception below is answered 500 by the server: count it as such
        try:
            response = await call_next(request)
            code = response.status_code
            return response
        finally:
            name = getattr(request.scope.get("route"), "path", "unmatched")
            metrics.requests.labels(name, request.method, str(code)).inc()
            metrics.request_seconds.labels(name).observe(time.perf_counter() - started)

    def body(schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
        """The OpenAPI ``responses`` of an endpoint that answers ``schema`` as JSON."""
        return {200: {"content": {"application/json": {"schema": schema}}}}

    tally_ref = {"$ref": "#/components/schemas/Tally"}
    subscriptions_ref = {"$ref": "#/components/schemas/Subscriptions"}

    @app.get("/v1/projects", dependencies=data, summary="Projects that have tallies or subscriptions")
    def projects() -> Response:
        return _json(orjson.dumps({"projects": table.projects()}))

    @app.get(
        "/v1/projects/{project}/campaigns",
        dependencies=data,
        summary="Every campaign tally of a project, in campaign order",
        responses=body(
            {
                "type": "object",
                "properties": {
                    "project_id": {"type": "string"},
                    "campaigns": {"type": "array", "items": tally_ref},
                },
            }
        ),
    )
    def campaigns(project: Id) -> Response:
        found = table.campaigns(project)
        if found is None:
            raise ApiError(404, f"no tally of project {project!r}")
        return _json(b'{"project_id":%s,"campaigns":[%s]}' % (orjson.dumps(project), b",".join(found)))

    @app.get(
        "/v1/projects/{project}/campaigns/{campaign}",
        dependencies=data,
        summary="The latest tally of a campaign (the tallies topic's newest version)",
        responses=body(tally_ref),
    )
    def campaign(project: Id, campaign: Id) -> Response:
        found = table.tally(project, campaign)
        if found is None:
            raise ApiError(404, f"no tally of campaign {campaign!r} in project {project!r}")
        return _json(found)

    @app.get(
        "/v1/projects/{project}/subscriptions",
        dependencies=data,
        summary="The web-push subscriptions of a project: its now-record and its day records, newest "
        "day first (the subscriptions topic's newest versions)",
        responses=body(
            {
                "type": "object",
                "required": ["project_id", "now", "days"],
                "properties": {
                    "project_id": {"type": "string"},
                    "now": {"anyOf": [subscriptions_ref, {"type": "null"}]},
                    "days": {"type": "array", "items": subscriptions_ref},
                },
            }
        ),
    )
    def subscriptions(project: Id) -> Response:
        found = table.subscriptions(project)
        if found is None:
            raise ApiError(404, f"no tally or subscriptions of project {project!r}")
        now, days = found
        return _json(
            b'{"project_id":%s,"now":%s,"days":[%s]}'
            % (orjson.dumps(project), now if now is not None else b"null", b",".join(days))
        )

    @app.get(
        "/v1/projects/{project}/conversions/{conversion_id}",
        dependencies=data,
        summary="The latest record of a conversion",
        responses=body({"$ref": "#/components/schemas/Conversion"}),
    )
    def conversion(project: Id, conversion_id: Id) -> Response:
        found = table.conversion(project, conversion_id)
        if found is None:
            raise ApiError(404, f"no conversion {conversion_id!r} in project {project!r}")
        return _json(found)

    @app.get(
        "/v1/events",
        dependencies=data,
        summary="Server-sent events: a 'snapshot' of the current tallies and a 'subscriptions' per "
        "current subscriptions record, then a 'tally' or a 'subscriptions' per change",
        response_class=EventSourceResponse,
    )
    async def events(
        request: Request, project: Annotated[str | None, Query(max_length=256)] = None
    ) -> EventSourceResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Change | None] = asyncio.Queue(STREAM_QUEUE)

        def put(change: Change) -> None:  # the follower's thread
            if project is None or change.project_id == project:
                # a closed loop (the server stopping) must not stop the follower
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_offer, queue, change)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            # listen here, not in the handler: a client gone before the stream starts never runs
            # this generator (nor its finally), and its listener would stay for good; listening
            # before the snapshot is taken loses no change (a repeated one has a version not higher)
            stop = table.listen(put)
            metrics.stream_clients.inc()
            try:
                wanted = [project] if project is not None else table.projects()
                snapshot = [t for p in wanted for t in (table.campaigns(p) or [])]
                yield ServerSentEvent(data=(b"[" + b",".join(snapshot) + b"]").decode(), event="snapshot")
                for p in wanted:  # then the subscriptions records, one event each, like their changes
                    now, days = table.subscriptions(p) or (None, [])
                    for record in ([now] if now is not None else []) + days:
                        yield ServerSentEvent(data=record.decode(), event="subscriptions")
                while (change := await queue.get()) is not None:
                    yield ServerSentEvent(data=change.record.decode(), event=change.kind)
            finally:
                stop()
                metrics.stream_clients.dec()

        return EventSourceResponse(stream(), ping=15)

    @app.get("/", include_in_schema=False)
    def index(request: Request, token_param: Annotated[str | None, Query(alias="token")] = None) -> Response:
        if token is not None and token_param is not None:  # log in: a cookie the stream sends too
            if not hmac.compare_digest(token_param.encode(), token.encode()):
                raise ApiError(401, "wrong token")
            response = RedirectResponse("/", status_code=303)
            secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
            response.set_cookie(
                COOKIE, token_param, max_age=COOKIE_MAX_AGE_S, httponly=True, samesite="strict", secure=secure
            )
            return response
        return HTMLResponse(page)

    @app.get(HEALTH_PATH, include_in_schema=False)
    def healthz() -> Response:
        ok = alive()
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    @app.get(READY_PATH, include_in_schema=False)
    def readyz() -> Response:
        ok = caught_up() and alive()
        return JSONResponse({"ok": ok, "caught_up": caught_up()}, status_code=200 if ok else 503)

    @app.get(METRICS_PATH, include_in_schema=False)
    def prometheus() -> Response:
        held = table.sizes()
        metrics.campaigns.set(held[0])
        metrics.conversions.set(held[1])
        metrics.caught_up.set(caught_up())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = original()
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas["Tally"] = _schema("tallies")
            schemas["Subscriptions"] = _schema("subscriptions")
            schemas["Conversion"] = _schema("conversions")
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _offer(queue: asyncio.Queue[Change | None], change: Change) -> None:
    """Queue a change for a stream client; a client that fell too far behind is closed (its
    EventSource reconnects and starts again from a snapshot)."""
    try:
        queue.put_nowait(change)
    except asyncio.QueueFull:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

"""REST API of the Policy Authority: one collection per kind under /v1.

Bodies are parsed by the kind's pydantic model and then checked by
``check_local`` - the same two steps as ``parse_spec``, which the offline
checker uses - and the service applies the cross-object rules. Every error
is ``{"error": {"code", "message", "field"}}`` with a 4xx status; nothing
answers with a traceback.

Every route knows who asks (``access.Access``: a bearer token of ``--tokens``,
or the anonymous admin without it) and passes the token's tenant to the
service as its ``scope``; every write logs an audit line. ``edge.BodyLimit``
caps request bodies before they are parsed.
"""

import asyncio
import logging
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from policyfabric import __version__
from policyfabric.authority import console, explain
from policyfabric.authority.access import (
    MAX_REVISION,
    Access,
    IfMatch,
    Validator,
    audit,
    body_revision,
    etag,
    expected,
    guarded,
    if_match,
)
from policyfabric.authority.auth import Principal, Tokens
from policyfabric.authority.edge import BodyLimit
from policyfabric.authority.events import WINDOW, Hub
from policyfabric.authority.metrics import CONTENT_TYPE, AuthorityMetrics, MetricsMiddleware
from policyfabric.authority.service import OWNER_FIELD, Authority, BatchOp
from policyfabric.model import kinds as k
from policyfabric.model.errors import BadRequest, Forbidden, Invalid, PolicyError, Problem
from policyfabric.model.kinds import Kind
from policyfabric.model.objects import SERVER_FIELDS
from policyfabric.model.parse import check_local, parse_spec, problems_from_pydantic
from policyfabric.store.base import StoreError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason: invalid, conflict, in_use, ...")
    message: str
    field: str | None = Field(None, description="the field at fault, as a dotted path")
    problems: list[dict[str, Any]] | None = Field(None, description="every problem, when several")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Revision(BaseModel):
    revision: int


MAX_BATCH = 20_000
OWNER_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # printable: it shows in listings and logs


class BatchItem(BaseModel):
    kind: str = Field(description="the collection or kind: endpoints, endpoint_group, bd ...")
    object: dict[str, Any] = Field(description="the object, as its collection's POST body")


class BatchOpItem(BaseModel):
    op: Literal["create", "update", "delete", "keep"] = Field(
        description="create (must not exist), update (replace by name; must exist), delete, or keep "
        "(must exist, at revision if given; writes nothing; prune spares it)"
    )
    kind: str = Field(description="the collection or kind: endpoints, endpoint_group, bd ...")
    object: dict[str, Any] = Field(
        description="create, update: the object as its collection's POST body; delete, keep: only "
        "its name (and tenant)"
    )
    revision: int | None = Field(
        None,
        ge=0,
        le=MAX_REVISION,
        description="update, delete, keep: the revision the client read; 409 if the object is not at it",
    )


class Batch(BaseModel):
    create: list[BatchItem] = Field(
        [], description=f"objects to create, in order (at most {MAX_BATCH}); the older form of items"
    )
    items: list[BatchOpItem] = Field(
        [],
        description=f"creates, updates and deletes (at most {MAX_BATCH}): deletes run first, then the "
        "rest in order; all or nothing",
    )
    dry_run: bool = Field(False, description="check everything and say what would change; write nothing")
    owner: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=OWNER_PATTERN,
        description="recorded as applied_by on every object this batch creates (apply: the file)",
    )
    prune: bool = Field(
        False, description="also delete every object created by `owner` that no item names (needs owner)"
    )


def parse_batch(body: Batch) -> list[tuple[Kind, Any]]:
    """Each item's kind and spec; every problem of every item in one 422, fields as create[i].x."""
    if len(body.create) > MAX_BATCH:
        raise Invalid(f"a batch holds at most {MAX_BATCH} objects, not {len(body.create)}", "create")
    items, problems = [], []
    for i, item in enumerate(body.create):
        kind = k.lookup(item.kind)
        if kind is None:
            problems.append(Problem(f"create[{i}].kind", f"{item.kind!r} is not a kind of object"))
            continue
        try:
            items.append((kind, parse_spec(kind, item.object)))
        except PolicyError as err:
            problems += [
                Problem(f"create[{i}].{p.field}" if p.field else f"create[{i}]", p.message)
                for p in err.problems
            ]
    if problems:
        raise Invalid.of(problems)
    return items


def _label(kind: Kind, data: dict[str, Any]) -> str:
    name, tenant = data.get("name"), data.get("tenant")
    return f"{kind} {tenant}/{name}" if kind.scoped and tenant else f"{kind} {name}"


def _key_of(kind: Kind, data: dict[str, Any]) -> tuple[str | None, str]:
    """A delete item's tenant and name (all it carries)."""
    problems = [
        Problem(f, "unknown field (a delete names its object: name, and tenant)")
        for f in data
        if f not in ("name", "tenant", *SERVER_FIELDS)
    ]
    name, tenant = data.get("name"), data.get("tenant")
    if not isinstance(name, str) or not name:
        problems.append(Problem("name", "field required: the name of the object to delete"))
    if kind.scoped and (not isinstance(tenant, str) or not tenant):
        problems.append(Problem("tenant", f"field required: a {kind} lives in a tenant"))
    if problems:
        raise Invalid.of(problems)
    return (str(tenant) if kind.scoped else None), str(name)


def parse_ops(body: Batch) -> list[BatchOp]:
    """Each item as a ``BatchOp``; every problem of every item in one 422, each field prefixed
    with its item (``items[2].ip[0]``) and each message naming the object."""
    if body.create and body.items:
        raise Invalid("a batch has either create (the older form) or items, not both", "items")
    if len(body.items) > MAX_BATCH:
        raise Invalid(f"a batch holds at most {MAX_BATCH} objects, not {len(body.items)}", "items")
    if body.prune and body.owner is None:
        raise Invalid("prune deletes what an owner created: give the owner", "owner")
    ops, problems = [], []
    for i, item in enumerate(body.items):
        where = f"items[{i}]"
        kind = k.lookup(item.kind)
        if kind is None:
            problems.append(Problem(f"{where}.kind", f"{where}: {item.kind!r} is not a kind of object"))
            continue
        if item.op == "create" and item.revision is not None:
            problems.append(Problem(f"{where}.revision", f"{where}: a create expects no revision"))
        try:
            if item.op in ("delete", "keep"):
                tenant, name = _key_of(kind, item.object)
                ops.append(BatchOp(item.op, kind, tenant, name, None, item.revision, where))
            else:
                spec = parse_spec(kind, item.object)
                ops.append(BatchOp(item.op, kind, spec.scope, spec.name, spec, item.revision, where))
        except PolicyError as err:
            label = _label(kind, item.object)
            problems += [
                Problem(f"{where}.{p.field}" if p.field else where, f"{where} ({label}): {p.message}")
                for p in err.problems
            ]
    if problems:
        raise Invalid.of(problems)
    return ops


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "malformed request"),
        (401, "no token, or an unknown one (with --tokens or --keystone)"),
        (403, "the token's role or tenant does not allow this"),
        (404, "no such object (or one of another tenant)"),
        (409, "conflicts with other objects, in use, or changed since the revision the request expects"),
        (413, "the body is over --max-body, or (--store etcd) the write is over etcd's limits"),
        (422, "invalid value"),
        (
            503,
            "with --keystone: Keystone could not be asked whether the token is valid; with --store etcd: "
            "etcd cannot be reached, or concurrent writers kept winning; retry",
        ),
    )
}
MiB = 1 << 20


def error_response(err: PolicyError) -> JSONResponse:
    detail: dict[str, Any] = {"code": err.code, "message": err.message, "field": err.field}
    if len(err.problems) > 1:
        detail["problems"] = [{"field": p.field, "message": p.message} for p in err.problems]
    return JSONResponse({"error": detail}, status_code=err.status, headers=err.headers or None)


def _out_model(kind: Kind) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "id": (str, ...),
        "revision": (int, ...),
        OWNER_FIELD: (
            str | None,
            Field(None, description="the batch owner (the file `apply` read) that created it, if any"),
        ),
    }
    if kind is k.ENDPOINT:
        fields["status"] = (str, Field(description="DOWN until an agent has its flows installed"))
    return create_model(f"{kind.spec.__name__}Out", __base__=kind.spec, **fields)


def _collection_routes(app: FastAPI, authority: Authority, kind: Kind, access: Access) -> None:
    spec_type = kind.spec
    out = _out_model(kind)
    items = create_model(f"{kind.spec.__name__}List", items=(list[out], ...), revision=(int, ...))  # type: ignore[valid-type]
    deleted = create_model(f"{kind.spec.__name__}Deleted", deleted=(out, ...), revision=(int, ...))
    base = f"/v1/{kind.collection}"
    tags: list[str | Enum] = [kind.collection]
    Caller = Annotated[Principal, Depends(access.principal)]  # any known token
    Writer = Annotated[Principal, Depends(access.writer(kind))]

    def create(body: spec_type, who: Writer) -> JSONResponse:  # type: ignore[valid-type]
        spec = check_local(body)
        guarded(who, "POST", base, who.check_write, kind, spec.scope)
        made = authority.create(kind, spec, who.tenant)
        audit(who, "POST", kind, made, made["revision"])
        return JSONResponse(made, status_code=201, headers=etag(made))

    def list_(
        who: Caller,
        tenant: str | None = Query(None, description="only objects of this tenant"),
        name: str | None = Query(None, description="only the object with this name"),
    ) -> dict[str, Any]:
        if who.tenant is not None and kind.scoped:
            if tenant not in (None, who.tenant):
                return {"items": [], "revision": authority.revision()}  # what a member sees of it
            tenant = who.tenant
        found, revision = authority.list(kind, tenant, name)
        return {
            "items": [o for o in found if who.sees(kind.name, o.get("tenant"), o["name"])],
            "revision": revision,
        }

    def get(id: str, who: Caller) -> JSONResponse:
        obj = authority.get(kind, id, who.tenant)
        return JSONResponse(obj, headers=etag(obj))

    def replace(
        id: str,
        body: spec_type,  # type: ignore[valid-type]
        who: Writer,
        match: IfMatch = None,
        revision: Annotated[int | None, Depends(body_revision)] = None,
    ) -> JSONResponse:
        expect = expected(if_match(match), revision)
        made = authority.replace(kind, id, check_local(body), scope=who.tenant, expect=expect)
        audit(who, "PUT", kind, made, made["revision"])
        return JSONResponse(made, headers=etag(made))

    def remove(id: str, who: Writer, match: IfMatch = None) -> dict[str, Any]:
        gone, revision = authority.delete(kind, id, scope=who.tenant, expect=if_match(match))
        audit(who, "DELETE", kind, gone, revision)
        return {"deleted": gone, "revision": revision}

    title = str(kind)
    item = f"{base}/{{id}}"
    routes = (
        (app.post, base, create, f"Create a {title}", 201, out),
        (app.get, base, list_, f"List {title}s", 200, items),
        (app.get, item, get, f"Read a {title}", 200, out),
        (app.put, item, replace, f"Replace a {title}", 200, out),
        (app.delete, item, remove, f"Delete a {title}", 200, deleted),
    )
    for method, path, handler, summary, status, model in routes:
        method(
            path,
            status_code=status,
            tags=tags,
            summary=summary,
            responses={status: {"model": model}, **ERRORS},
            response_class=JSONResponse,
        )(handler)


def _request_problems(exc: RequestValidationError) -> PolicyError:
    errors = list(exc.errors())
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if error.get("type") == "json_invalid":
            where = error.get("ctx", {}).get("error", "")
            return BadRequest(f"the request body is not valid JSON ({where})".replace(" ()", ""))
        if loc == ("body",):
            return BadRequest(f"the request body must be a JSON object ({error.get('msg', '')})")
    problems = problems_from_pydantic(errors, strip=1)  # drop "body" / "query"
    return Invalid.of(problems or [Problem(None, "invalid request")])


class Observer(Protocol):
    """What the OpFlex server shows through REST."""

    def agents_json(self) -> list[dict[str, Any]]: ...

    def faults_json(self) -> list[dict[str, Any]]: ...

    def watch_agents(self, callback: Callable[[dict[str, Any]], None]) -> None: ...


def create_app(
    authority: Authority,
    observer: Observer | None = None,
    tokens: Tokens | None = None,
    max_body: int = MiB,
    keystone: Validator | None = None,
    events_window: int = WINDOW,
) -> FastAPI:
    """The REST API; ``tokens`` and ``keystone`` None: no authentication (every request is the
    anonymous admin). ``keystone``: Keystone tokens (``--keystone``) instead of ``tokens``."""
    app = FastAPI(
        title="policyfabric Policy Authority",
        version=__version__,
        description="Declare tenants, networks and group-based policy; agents enforce it.",
        docs_url=None,  # console.mount serves /docs from local files (FastAPI's page loads a CDN)
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=max_body)
    access = Access(tokens, keystone)
    Caller = Annotated[Principal, Depends(access.principal)]  # any known token

    @app.exception_handler(PolicyError)
    async def policy_error(_: Request, exc: PolicyError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def request_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_request_problems(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        code = codes.get(exc.status_code, "bad_request")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no such resource: {request.url.path} (collections are under /v1)"
        body = {"error": {"code": code, "message": message, "field": None}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        """The store failed through no fault of the request (etcd down, no quorum, a write over
        etcd's limits): its status (503, 413) and code, not a 500; 503s say when to retry."""
        log.warning("store error on %s %s: %s", request.method, request.url.path, exc)
        body = {"error": {"code": exc.code, "message": str(exc), "field": None}}
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        body = {
            "error": {"code": "internal", "message": "internal error: see the authority's log", "field": None}
        }
        return JSONResponse(body, status_code=500)

    @app.get("/v1/revision", tags=["meta"], summary="The current global revision", response_model=Revision)
    def revision(_: Caller) -> dict[str, int]:
        return {"revision": authority.revision()}

    @app.get(
        "/v1/changes",
        tags=["meta"],
        summary="Changes after a revision, oldest first, in whole revisions",
        responses=ERRORS,
    )
    def changes(
        who: Caller,
        since: int = Query(0, ge=0, le=MAX_REVISION, description="return changes with a higher revision"),
        limit: int = Query(1000, ge=1, le=10000),
    ) -> dict[str, Any]:
        page = authority.changes(since, limit, who.tenant)
        return {"changes": [c.__dict__ for c in page.changes], "revision": page.revision, "until": page.until}

    hub = Hub(authority, observer, window=events_window)
    app.state.events = hub
    metrics = AuthorityMetrics(authority, hub, observer)
    if observer is not None and hasattr(observer, "flush"):
        metrics.timed_flush(observer)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        """Prometheus metrics (text format). Not under /v1 and not authenticated, as exporters are:
        it carries counts, never names (listen on a private address, or filter it in a proxy)."""
        await hub.start()  # endpoints by status come from the events follower
        return Response(await asyncio.to_thread(metrics.exposition), media_type=CONTENT_TYPE)

    @app.get(
        "/v1/events",
        tags=["meta"],
        summary="What changes, as server-sent events (text/event-stream), resumable from a revision",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
    )
    async def events(
        who: Caller,
        since: int | None = Query(
            None,
            ge=0,
            le=MAX_REVISION,
            description="first replay every change after this revision (default: from now on)",
        ),
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                description="the id of the last event received (a revision): resume after it; wins over "
                "since (a browser's EventSource sends it when it reconnects)",
            ),
        ] = None,
    ) -> StreamingResponse:
        start = since
        if last_event_id is not None and last_event_id.strip():
            text = last_event_id.strip()
            if not text.isdigit() or not text.isascii() or int(text) > MAX_REVISION:
                raise BadRequest("Last-Event-ID must be a revision (an integer)", "Last-Event-ID")
            start = int(text)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(hub.stream(who, start), media_type="text/event-stream", headers=headers)

    @app.post(
        "/v1/batch",
        tags=["meta"],
        status_code=201,
        summary="Create, update and delete many objects in one transaction (all or nothing)",
        responses={200: {"description": "items: what was done (or, dry run, would be)"}, **ERRORS},
    )
    def batch(body: Batch, who: Annotated[Principal, Depends(access.writer(None))]) -> JSONResponse:
        if body.items or body.dry_run or body.prune or body.owner is not None:
            return _batch_items(body, who)
        items = parse_batch(body)
        for i, (kind, spec) in enumerate(items):
            try:
                guarded(who, "POST", "/v1/batch", who.check_write, kind, spec.scope)
            except Forbidden as err:
                where = f"create[{i}].{err.field}" if err.field else f"create[{i}].kind"
                raise Forbidden(f"create[{i}] ({kind} {spec.name!r}): {err.message}", where) from None
        created = authority.create_many(items, who.tenant)
        revision = max((c["revision"] for c in created), default=authority.revision())
        kinds = sorted({str(k.BY_NAME[kind.name]) for kind, _ in items})
        summary = {"name": f"{len(created)} objects ({', '.join(kinds)})"}
        audit(who, "POST", "batch", summary, revision)
        return JSONResponse({"created": created, "revision": revision}, status_code=201)

    def _batch_items(body: Batch, who: Principal) -> JSONResponse:
        ops = parse_ops(body)
        for op in ops:
            if op.op == "keep":
                continue  # writes nothing: what the caller may see is the service's check (scope)
            try:
                guarded(who, "POST", "/v1/batch", who.check_write, op.kind, op.tenant)
            except Forbidden as err:
                raise Forbidden(
                    f"{op.where} ({op.label}): {err.message}", f"{op.where}.{err.field or 'kind'}"
                ) from None

        def may_delete(kind: Kind, tenant: str | None, name: str) -> None:
            guarded(who, "POST", "/v1/batch", who.check_write, kind, tenant)

        done = authority.batch(
            ops,
            scope=who.tenant,
            owner=body.owner,
            prune=body.prune,
            dry_run=body.dry_run,
            may_delete=may_delete,
        )
        if done.written:
            counts: dict[str, int] = {}
            for item in done.items:
                counts[item["action"]] = counts.get(item["action"], 0) + 1
            what = ", ".join(f"{n} {action}" for action, n in counts.items() if action != "unchanged")
            audit(who, "POST", "batch", {"name": what}, done.revision)
        answer = {"items": done.items, "revision": done.revision, "dry_run": body.dry_run}
        return JSONResponse(answer, status_code=200)

    @app.get("/v1/agents", tags=["opflex"], summary="Policy agents known to this authority", responses=ERRORS)
    def agents(who: Caller) -> dict[str, Any]:
        who.check_global("agents")
        return {"items": observer.agents_json() if observer else []}

    @app.get(
        "/v1/faults", tags=["opflex"], summary="Faults reported by agents (state_report)", responses=ERRORS
    )
    def faults(who: Caller) -> dict[str, Any]:
        who.check_global("faults")
        return {"items": observer.faults_json() if observer else []}

    for kind in k.ORDER:
        _collection_routes(app, authority, kind, access)
    console.mount(app, authority, access)  # the web console at / and /ui, and /docs
    explain.mount(app, authority, access, observer)  # GET /v1/explain: asks the agents (pf_trace)
    return app

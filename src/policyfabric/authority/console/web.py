"""The console's routes: the page and its assets, local Swagger UI, and the matrix API.

``mount`` adds them to the REST app (``api.create_app``); every data route takes the same
``Access`` dependency as the REST API, so the console needs no authentication of its own: the
static files carry no data and are public, the data comes through token-checked ``/v1`` routes.
"""

import importlib.util
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from policyfabric.authority.access import Access
from policyfabric.authority.auth import Principal
from policyfabric.authority.console.matrix import Intent, Probe, explain, family_of, matrix
from policyfabric.authority.service import Authority
from policyfabric.model import kinds as k
from policyfabric.model.errors import Invalid, NotFound

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/docs/static"
# no-cache: the browser revalidates (cheap, ETag) so a new version of the page is never stale
NO_CACHE = {"Cache-Control": "no-cache"}
# gzip level 1: the JSON of 10,000 endpoints goes from 2.34 MB to 471 kB (bench/console.py), and a
# 2.6 MB list of them compresses in ~14 ms; level 6 saves 13% more bytes for 2.7x the CPU, level 9
# (Starlette's default) 18% more for 20x (~290 ms), measured on that list
GZIP_LEVEL = 1
GZIP_MIN_BYTES = 1024  # below, the header costs about what compression saves


def swagger_dir() -> Path | None:
    """The swagger-ui dist files shipped by the ``swagger-ui-py`` package, if it is installed."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(next(iter(spec.submodule_search_locations))) / "static"
    return found if (found / "swagger-ui-bundle.js").is_file() else None


def tenant_intent(authority: Authority, who: Principal, tenant: str) -> Intent:
    """The policy objects of ``tenant`` as ``who`` sees them; 404 for a tenant it cannot see
    (the REST API's rule: another tenant's objects do not exist for a member)."""
    if not who.sees(k.TENANT.name, None, tenant) or not authority.list(k.TENANT, None, tenant)[0]:
        raise NotFound(f"no tenant {tenant!r}", "tenant")
    kinds = (k.ENDPOINT_GROUP, k.CONTRACT, k.SECURITY_GROUP, k.ENDPOINT)
    return Intent.of(tenant, {kind.name: authority.list(kind, tenant)[0] for kind in kinds})


def mount(app: FastAPI, authority: Authority, access: Access) -> None:
    """Serve the console at ``/`` and ``/ui``, Swagger UI at ``/docs`` from local files, and
    ``/v1/matrix``. The app must be made with ``docs_url=None`` (FastAPI's own page uses a CDN).

    Every response of the app is gzipped for a client that accepts it (the page, its script, and
    the REST API's JSON, which is most of what the console downloads: a tenant's endpoints), but
    not the events stream (Starlette leaves ``text/event-stream`` alone, so events are not held
    back in a compressor's buffer). Added here, last, it is the outermost middleware: what the
    others (metrics, body limit) see is uncompressed."""
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=GZIP_LEVEL)
    Caller = Annotated[Principal, Depends(access.principal)]
    page = (STATIC / "index.html").read_text()

    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=NO_CACHE)

    for path in ("/", "/ui", "/ui/"):
        app.get(path, include_in_schema=False, response_class=HTMLResponse)(index)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console")

    swagger = swagger_dir()
    if swagger is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=swagger), name="swagger-ui")

    @app.get("/docs", include_in_schema=False, response_model=None)
    def docs() -> HTMLResponse | PlainTextResponse:
        if swagger is None:
            return PlainTextResponse(
                "Swagger UI's files are not installed (the swagger-ui-py package); "
                "the API's description is at /openapi.json",
                status_code=503,
            )
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            oauth2_redirect_url="/docs/oauth2-redirect",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(
        "/v1/matrix",
        tags=["console"],
        summary="A tenant's connectivity matrix (EPG x EPG, security group x group), from the intent",
    )
    def matrix_route(who: Caller, tenant: str = Query(description="the tenant")) -> dict[str, Any]:
        return matrix(tenant_intent(authority, who, tenant))

    @app.get(
        "/v1/matrix/explain",
        tags=["console"],
        summary="Whether the intent lets one endpoint open a connection to another, and which rule says so",
    )
    def explain_route(
        who: Caller,
        tenant: str = Query(description="the tenant of both endpoints"),
        source: str = Query(description="the endpoint that opens the connection"),
        destination: str = Query(description="the endpoint it connects to"),
        probe: str = Query("tcp/80", description="tcp/PORT, udp/PORT, icmp or icmpv6"),
    ) -> JSONResponse:
        intent = tenant_intent(authority, who, tenant)
        for field, name in (("source", source), ("destination", destination)):
            if name not in intent.endpoints:
                raise NotFound(f"no endpoint {name!r} in tenant {tenant!r}", field)
        src, dst = intent.endpoints[source], intent.endpoints[destination]
        try:
            parsed = Probe.parse(probe, family_of(src, dst))
        except ValueError as exc:
            raise Invalid(str(exc), "probe") from None
        return JSONResponse(explain(intent, source, destination, parsed).to_json())

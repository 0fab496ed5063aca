"""The authority's Prometheus metrics (``GET /metrics``, the text exposition format).

One ``CollectorRegistry`` per app (not the process-wide default: tests build several apps in one
process). Counted as things happen: REST requests by route template, method and status, with
their latency (a pure ASGI middleware: it never buffers a response, so event streams pass
through), commits and changed objects (a commit listener), events streamed, and the OpFlex
flush (rebuild and push to every session: the fan-out). Read at scrape time, from what the
authority already holds in memory: OpFlex sessions and agents, endpoints by status (kept by the
events hub as commits land, so a scrape does not read the store), faults by severity.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policyfabric.authority.events import Hub
from policyfabric.authority.service import Authority
from policyfabric.store.base import Change

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class OpflexView(Protocol):
    """What the scrape reads of the OpFlex server (``OpflexServer``)."""

    def agents_json(self) -> list[dict[str, Any]]: ...

    def faults_json(self) -> list[dict[str, Any]]: ...


class AuthorityMetrics:
    def __init__(self, authority: Authority, hub: Hub, opflex: OpflexView | None) -> None:
        self.registry = CollectorRegistry()
        self.requests = PCounter(
            "policyfabric_http_requests",
            "REST requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "policyfabric_http_request_seconds",
            "REST request latency, until the response starts (an event stream: until it opens)",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commits = PCounter(
            "policyfabric_commits", "write transactions committed", registry=self.registry
        )
        self.changes = PCounter(
            "policyfabric_changed_objects",
            "objects written, by kind and op",
            ["kind", "op"],
            registry=self.registry,
        )
        self.events = PCounter(
            "policyfabric_events",
            "events made for GET /v1/events, by event",
            ["event"],
            registry=self.registry,
        )
        self.flush = Histogram(
            "policyfabric_opflex_flush_seconds",
            "one OpFlex flush: rebuild the changed trees and push them to every session (the fan-out)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Live(hub, opflex))
        authority.listeners.append(self._committed)
        hub.on_event = lambda event: self.events.labels(event.name).inc()

    def _committed(self, changes: list[Change]) -> None:
        self.commits.inc()
        for (kind, op), n in Counter((c.kind, c.op) for c in changes).items():
            self.changes.labels(kind, op).inc(n)

    def timed_flush(self, opflex: Any) -> None:
        """Time each flush of ``opflex`` (an ``OpflexServer``): its ``flush`` is wrapped in place."""
        flush = opflex.flush

        async def timed() -> None:
            started = time.perf_counter()
            try:
                await flush()
            finally:
                self.flush.observe(time.perf_counter() - started)

        opflex.flush = timed

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    """Gauges read at scrape time."""

    def __init__(self, hub: Hub, opflex: OpflexView | None) -> None:
        self.hub, self.opflex = hub, opflex

    def collect(self) -> Iterator[GaugeMetricFamily]:
        statuses = GaugeMetricFamily("policyfabric_endpoints", "endpoints by status", labels=["status"])
        for status, n in sorted(self.hub.status_counts().items()):
            statuses.add_metric([str(status)], n)
        yield statuses
        if self.opflex is None:
            return
        agents = self.opflex.agents_json()
        sessions = GaugeMetricFamily(
            "policyfabric_opflex_agents", "OpFlex agents known", labels=["connected"]
        )
        up = sum(1 for a in agents if a.get("connected"))
        sessions.add_metric(["true"], up)
        sessions.add_metric(["false"], len(agents) - up)
        yield sessions
        subs = GaugeMetricFamily(
            "policyfabric_opflex_subscriptions", "policy and endpoint subscriptions held"
        )
        subs.add_metric([], sum(int(a.get("subscriptions", 0)) for a in agents))
        yield subs
        faults = GaugeMetricFamily(
            "policyfabric_faults", "faults agents reported, by severity", labels=["severity"]
        )
        for severity, n in sorted(Counter(str(f.get("severity")) for f in self.opflex.faults_json()).items()):
            faults.add_metric([severity], n)
        yield faults


class MetricsMiddleware:
    """Count and time every REST request by its route template (``/v1/endpoints/{id}``, never the
    id: one series per route, not per object)."""

    def __init__(self, app: ASGIApp, metrics: AuthorityMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"
                self.metrics.latency.labels(path, scope["method"]).observe(time.perf_counter() - started)
                self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            await send(message)

        await self.app(scope, receive, sending)


__all__ = ["CONTENT_TYPE", "AuthorityMetrics", "MetricsMiddleware"]

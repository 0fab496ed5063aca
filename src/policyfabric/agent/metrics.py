"""The agent's Prometheus metrics (``--metrics-listen ADDR:PORT``, served at ``/metrics``).

Counted as the reconcile loop runs (``AgentMetrics.reconciled``, ``applied``, ``drift_repaired``,
called by ``ovs_agent``): reconcile and renderer apply durations, reconciles that failed, drift
repairs by renderer. Read at scrape time from the agent itself: flows by OpenFlow table (from the
desired state last applied, counted once per applied state), local endpoints, whether the OpFlex
session is up, the revision rendered. Served by prometheus_client's own HTTP server on a
thread: a scrape never waits for the reconcile loop, nor the loop for a scrape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client import Counter as PCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AgentMetrics:
    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        """``state()``: what the scrape reads (``OvsAgent.metrics_state``)."""
        self.registry = CollectorRegistry()
        self.reconcile = Histogram(
            "policyfabric_agent_reconcile_seconds",
            "one reconcile: read OVSDB, declare, update the view, compile and apply every renderer",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.failures = PCounter(
            "policyfabric_agent_reconcile_failures",
            "reconciles that failed (retried)",
            registry=self.registry,
        )
        self.apply = Histogram(
            "policyfabric_agent_apply_seconds",
            "one renderer apply that changed the device",
            ["renderer"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.repairs = PCounter(
            "policyfabric_agent_drift_repairs",
            "changes made to a device by someone else, repaired",
            ["renderer"],
            registry=self.registry,
        )
        self.registry.register(_Live(state))

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)


class FlowCount:
    """Flows by table of the OVS renderer's desired state (a ``Bridge``, immutable): counted once
    per state applied, at the first scrape that sees it."""

    def __init__(self) -> None:
        self._of: object = None
        self._counts: dict[int, int] = {}

    def __call__(self, desired: Any) -> dict[int, int]:
        if desired is None:
            return {}
        if desired is not self._of:
            self._counts = dict(Counter(flow.table for flow in desired.flows))
            self._of = desired
        return self._counts


class _Live(Collector):
    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.state()
        flows = GaugeMetricFamily(
            "policyfabric_agent_flows", "OpenFlow flows installed, by table", labels=["table"]
        )
        for table, n in sorted(now.get("flows_by_table", {}).items()):
            flows.add_metric([str(table)], n)
        yield flows
        for name, help_text in (
            ("endpoints", "local endpoints"),
            ("opflex_connected", "1 while the OpFlex session to the authority is up"),
            ("rendered_revision", "the authority revision the installed flows reflect"),
            ("reconciles", "reconciles run since start"),
        ):
            value = now.get(name)
            if value is not None:
                gauge = GaugeMetricFamily(f"policyfabric_agent_{name}", help_text)
                gauge.add_metric([], float(value))
                yield gauge


__all__ = ["AgentMetrics", "FlowCount"]

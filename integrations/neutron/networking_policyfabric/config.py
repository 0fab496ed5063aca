"""The driver's options, section ``[policyfabric]`` of Neutron's configuration."""

from __future__ import annotations

from typing import Any

from oslo_config import cfg

OPTS = [
    cfg.StrOpt("url", default="http://127.0.0.1:8700", help="the authority's REST URL"),
    cfg.StrOpt("token", default="", secret=True, help="an admin token of the authority (--tokens)"),
    cfg.FloatOpt("timeout", default=10.0, help="seconds to wait for one REST answer"),
    cfg.ListOpt("gateway_hosts", default=[], help="hosts that may be elected routers' SNAT gateway"),
    cfg.FloatOpt("status_interval", default=1.0, help="seconds between reads of endpoint status"),
    cfg.FloatOpt("agents_ttl", default=2.0, help="seconds a read of the live agents is reused at binding"),
]
cfg.CONF.register_opts(OPTS, "policyfabric")


def conf() -> Any:
    return cfg.CONF.policyfabric


def list_opts() -> list[tuple[str, list[Any]]]:
    """For oslo-config-generator."""
    return [("policyfabric", OPTS)]

"""An endpoint whose intent lists ``slaac`` is known by its SLAAC address (EUI-64 of its MAC in each
SLAAC subnet of its bridge domain) wherever the agent knows addresses: in what its host declares
to the registry (so other hosts route to it), in its own host's record (port security, routing),
and as the subnets come and go, incrementally as in a view built whole.

The world is test_view_incremental_unit's: the authority's own tree writer, a real
``PolicyClient`` fed as the repository feeds it, h1's ``ViewState``."""

from __future__ import annotations

import ipaddress

from policyfabric.agent.endpoints import slaac_addresses
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.tables import PORT_SECURITY, ROUTING
from policyfabric.agent.view import Network
from policyfabric.model import objects as o
from policyfabric.model.addressing import eui64_address
from tests.test_view_incremental_unit import TUNNEL_PORT, T, World, settled, update, whole

PREFIX = "fd00:10::/64"


def slaac_subnet(w: World, mode: str = "slaac") -> None:
    """A SLAAC subnet on bd0 (e0, plugged on h1, and e4, on h2, are in g0 on bd0), routed by r0."""
    w.specs["subnet"]["s6"] = o.Subnet(
        name="s6", tenant=T, bridge_domain="bd0", cidr=PREFIX, ipv6_ra_mode=mode, ipv6_address_mode=mode
    )
    r0 = w.specs["router"]["r0"]
    w.specs["router"]["r0"] = r0.model_copy(update={"interfaces": [*r0.interfaces, "s6"]})


def with_slaac(w: World, name: str) -> str:
    """Endpoint ``name`` lists ``slaac`` besides its IPv4 address; its SLAAC address in PREFIX."""
    ep = w.specs["endpoint"][name]
    w.specs["endpoint"][name] = ep.model_copy(update={"ip": [*ep.ip, "slaac"]})
    return str(eui64_address(str(ep.mac), ipaddress.IPv6Network(PREFIX)))


def record(net: Network, name: str, local: bool = True) -> tuple[str, ...]:
    [ep] = [e for e in (net.local if local else net.remote) if e.key == f"{T}/{name}"]
    return ep.ips


def test_a_slaac_endpoint_holds_and_declares_its_eui64_address() -> None:
    w, inc, _ = settled()
    slaac_subnet(w)
    mine, theirs = with_slaac(w, "e0"), with_slaac(w, "e4")
    net = update(w, inc)
    assert mine in record(net, "e0") and "10.0.0.10" in record(net, "e0")
    assert theirs in record(net, "e4", local=False)  # declared by h2, read back from the registry
    assert net == whole(w)
    assert slaac_addresses("02:00:00:00:00:01", [PREFIX]) == ("fd00:10::ff:fe00:1",)


def test_the_slaac_address_follows_the_subnets_of_the_bridge_domain() -> None:
    w, inc, _ = settled()
    mine, theirs = with_slaac(w, "e0"), with_slaac(w, "e4")
    net = update(w, inc)  # no SLAAC subnet yet: nothing to make an address in
    assert record(net, "e0") == ("10.0.0.10",) and record(net, "e4", local=False) == ("10.0.0.14",)
    slaac_subnet(w)
    net = update(w, inc)
    assert mine in record(net, "e0") and theirs in record(net, "e4", local=False)
    assert net == whole(w)
    # a subnet that is IPv6 but not SLAAC (stateful DHCPv6) makes no address
    w.specs["subnet"]["s6"] = w.specs["subnet"]["s6"].model_copy(
        update={"ipv6_ra_mode": "dhcpv6-stateful", "ipv6_address_mode": "dhcpv6-stateful"}
    )
    net = update(w, inc)
    assert record(net, "e0") == ("10.0.0.10",) and record(net, "e4", local=False) == ("10.0.0.14",)
    assert net == whole(w)


def test_port_security_and_routing_know_the_slaac_address() -> None:
    w, inc, _ = settled()
    slaac_subnet(w)
    mine, theirs = with_slaac(w, "e0"), with_slaac(w, "e4")
    net = update(w, inc)
    flows = compile_pipeline(net, TUNNEL_PORT)
    sent_from = {dict(f.match).get("ipv6_src") for f in flows if f.table == PORT_SECURITY}
    routed_to = {dict(f.match).get("ipv6_dst") for f in flows if f.table == ROUTING}
    assert mine in sent_from  # e0 may send from it
    assert {mine, theirs} <= routed_to  # r0 routes to both, the remote one from the registry

"""External networks in the compiled pipeline and the gateway election, as pure functions.
Real packets: test_external_dataplane.py."""

from __future__ import annotations

from dataclasses import replace

from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.tables import CLASSIFY, EXT_ARP, EXT_IN, NAT_OUT, POLICY_CT, ROUTING
from policyfabric.agent.view import ExternalNet, FloatingIp, Network, RouterGateway, policy_view
from policyfabric.authority.gateways import Candidate, GatewayHost, elect
from policyfabric.authority.opflex.policy_tree import tenant_tree
from policyfabric.model import objects as o
from tests.test_routing_unit import APP1_REMOTE, APP2, R1, TUNNEL, WEB1, network

PUBLIC = ExternalNet("/ext/public/", "public", "203.0.113.0/24", "203.0.113.1")
GW = RouterGateway("/ext/public/", "203.0.113.2", True, "gw1", "192.0.2.3")
ROUTER = replace(R1, gateway=GW)
FIP = FloatingIp("203.0.113.10", "/ext/public/", WEB1.key)


def host(name: str, local: tuple = (), remote: tuple = (), port: int | None = 9) -> Network:  # type: ignore[type-arg]
    base = network(local, remote, routers={"r1": ROUTER})
    ext = replace(PUBLIC, ofport=port) if port else PUBLIC
    return replace(base, external={PUBLIC.uri: ext}, floating_ips=(FIP,), host=name)


def matching(flows: list, table: int, **match: str) -> list:  # type: ignore[type-arg]
    want = set(match.items())
    return [f for f in flows if f.table == table and want <= set(f.match)]


def test_a_floating_ip_is_natted_on_its_endpoints_host_only() -> None:
    h1 = compile_pipeline(host("h1", (WEB1,)), TUNNEL)
    [dnat] = matching(h1, EXT_IN, nw_dst=FIP.ip)
    assert "nat(dst=10.1.0.10)" in dnat.actions[-1]
    [snat] = matching(h1, NAT_OUT, nw_src="10.1.0.10")
    assert f"nat(src={FIP.ip})" in snat.actions[-1]
    assert matching(h1, EXT_ARP, arp_tpa=FIP.ip)  # it answers ARP for the floating IP
    h2 = compile_pipeline(host("h2", (APP2,), (replace(WEB1, ofport=None, vtep="192.0.2.1"),)), TUNNEL)
    assert not matching(h2, EXT_IN, nw_dst=FIP.ip) and not matching(h2, EXT_ARP, arp_tpa=FIP.ip)


def test_without_a_port_on_the_network_a_host_does_no_nat() -> None:
    flows = compile_pipeline(host("h1", (WEB1,), port=None), TUNNEL)
    assert not matching(flows, EXT_IN, nw_dst=FIP.ip)
    assert not matching(flows, CLASSIFY, in_port="9")


def test_compute_hosts_send_snat_traffic_to_the_elected_gateway_after_policy() -> None:
    flows = compile_pipeline(host("h2", (APP2,)), TUNNEL)
    [out] = [f for f in flows if f.table == ROUTING and f.priority == 40]
    assert "set_field:0xc0000203->reg7" in out.actions  # gw1's tunnel address
    assert f"set_field:{external.transit_vni(ROUTER):#x}->reg2" in out.actions
    assert out.actions[-1] == "goto_table:60"  # policy first
    # the router's own subnets are never sent out, even to unknown addresses
    drops = [f for f in flows if f.table == ROUTING and f.priority == 90]
    assert {dict(f.match)["nw_dst"] for f in drops} == {"10.1.0.0/24", "10.2.0.0/24"}
    assert not matching(flows, EXT_IN, nw_dst=GW.ip)  # only the gateway answers for the router


def test_only_the_active_gateway_snats_and_it_routes_replies_back() -> None:
    gw1 = compile_pipeline(host("gw1", (), (APP1_REMOTE,)), TUNNEL)
    [inbound] = matching(gw1, EXT_IN, nw_dst=GW.ip)
    assert "commit" not in inbound.actions[-1]  # replies only: never a new connection inward
    assert matching(gw1, CLASSIFY, tun_id=hex(external.transit_vni(ROUTER)))
    assert matching(gw1, ROUTING, nw_dst="10.2.0.20")  # replies routed to the endpoint's host
    gw2 = compile_pipeline(host("gw2", (), (APP1_REMOTE,)), TUNNEL)
    assert not matching(gw2, EXT_IN, nw_dst=GW.ip)
    assert not matching(gw2, CLASSIFY, tun_id=hex(external.transit_vni(ROUTER)))


def test_the_outside_consumes_provided_contracts_only_where_a_floating_ip_lands() -> None:
    outside = hex(0x3FFF)
    h1 = compile_pipeline(host("h1", (WEB1,)), TUNNEL)
    assert matching(h1, POLICY_CT, reg0=outside)  # a clause: the outside as a consumer of http
    h2 = compile_pipeline(host("h2", (APP2,)), TUNNEL)
    assert [
        f for f in matching(h2, POLICY_CT, reg0=outside) if any("conjunction" in a for a in f.actions)
    ] == []


def test_the_election_prefers_the_listed_order_and_never_preempts() -> None:
    net = "/ext/public/"
    c = [Candidate(("acme", "r1"), net, ("gw1", "gw2"))]
    live = {n: GatewayHost(n, ip, frozenset({net})) for n, ip in (("gw1", "192.0.2.3"), ("gw2", "192.0.2.4"))}
    assert elect(c, live, {}) == {("acme", "r1"): ("gw1", "192.0.2.3")}
    only_gw2 = {"gw2": live["gw2"]}
    assert elect(c, only_gw2, {}) == {("acme", "r1"): ("gw2", "192.0.2.4")}
    # gw1 is back, gw2 holds the role: it keeps it
    assert elect(c, live, {("acme", "r1"): ("gw2", "192.0.2.4")}) == {("acme", "r1"): ("gw2", "192.0.2.4")}
    # a host without a port on the network, or none alive: no gateway
    cut = {"gw1": replace(live["gw1"], networks=frozenset())}
    assert elect(c, cut, {("acme", "r1"): ("gw1", "192.0.2.3")}) == {}


def test_the_agents_view_reads_gateways_and_floating_ips_from_the_policy_tree() -> None:
    objects: dict[str, list[o.Spec]] = {
        "l3_context": [o.L3Context(name="vrf1", tenant="acme")],
        "bridge_domain": [o.BridgeDomain(name="bd", tenant="acme", l3_context="vrf1")],
        "subnet": [o.Subnet(name="s", tenant="acme", bridge_domain="bd", cidr="10.1.0.0/24")],
        "router": [
            o.Router(
                name="r1",
                tenant="acme",
                l3_context="vrf1",
                interfaces=["s"],
                external_gateway=o.ExternalGateway(network="public", hosts=["gw1", "gw2"], ip="203.0.113.2"),
            )
        ],
        "floating_ip": [
            o.FloatingIp(name="f", tenant="acme", network="public", ip="203.0.113.10", endpoint="e")
        ],
    }
    tree = tenant_tree("acme", objects, {}, {"r1": ("gw2", "192.0.2.4")})
    view = policy_view(tree.mos)
    [router] = view.routers.values()
    assert router.gateway is not None
    assert (router.gateway.ip, router.gateway.active_host, router.gateway.active_vtep) == (
        "203.0.113.2",
        "gw2",
        "192.0.2.4",
    )
    assert [(f.ip, f.endpoint) for f in view.floating_ips] == [("203.0.113.10", "acme/e")]

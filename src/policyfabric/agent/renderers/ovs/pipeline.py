"""The Open vSwitch pipeline of ``br-int``, compiled as a pure function.

``compile_pipeline(network, tunnel_port)`` returns every flow the bridge
should hold; it does no I/O. It only assembles the parts, one module each:
``switching`` (classification, port security, ARP, L2, flooding, output),
``routing`` (distributed routing), ``external`` (floating IPs, SNAT),
``group_policy`` (contracts), ``secgroups`` (security groups). The tables
(what each may match, set and go to) and the registers' roles are declared
once, in ``tables.py``; the tests hold every flow to them (``verify``).

A new connection passes only if every layer that applies to it allows it:
group policy when either end is in an EPG (an end without one, class 0, is
never a contract party), then the sender's security groups (on the sender's
host) and the receiver's (on the receiver's host) for endpoints they govern.
Remote groups are address sets: one clause flow per member address, shared by
every rule that names the group, so flows grow with members + rules.

Group policy is checked on both hosts of a cross-host flow: the sender knows the
destination's group from the registry, the receiver gets the source group in
a Geneve option (``tun_metadata0``, class 0x5046). VXLAN-GBP would be the
OpFlex way, but OVS's userspace datapath does not put the GBP extension on
the wire (checked with OVS 3.1), so the tunnels are Geneve. Each host's conntrack sees both
directions, so replies pass as established on both.
"""

from __future__ import annotations

from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.flows import Flow, flow
from policyfabric.agent.renderers.ovs.group_policy import policy
from policyfabric.agent.renderers.ovs.routing import routing
from policyfabric.agent.renderers.ovs.secgroups import security_groups
from policyfabric.agent.renderers.ovs.switching import classify, endpoint_flows, flooding, tunnel_output
from policyfabric.agent.renderers.ovs.tables import OUTPUT, POLICY, goto
from policyfabric.agent.view import Network


def compile_pipeline(net: Network, tunnel_port: int | None, enforce_policy: bool = True) -> list[Flow]:
    """Every flow ``br-int`` should hold for this network view, deduplicated. With
    ``enforce_policy=False`` (another renderer, e.g. nftables, enforces policy on this host) the
    bridge forwards and checks port security only: POLICY passes everything to OUTPUT."""
    rules = [*policy(net), *security_groups(net)] if enforce_policy else [flow(POLICY, 0, None, goto(OUTPUT))]
    flows = [
        *classify(net, tunnel_port),
        *endpoint_flows(net, tunnel_port),
        *flooding(net, tunnel_port),
        *routing(net, tunnel_port),
        *external.external_flows(net, tunnel_port, {e.bd for e in net.local}),
        *rules,
        *tunnel_output(tunnel_port),
    ]
    return list(dict.fromkeys(flows))  # unordered by design: the applier diffs by match


__all__ = ["compile_pipeline"]

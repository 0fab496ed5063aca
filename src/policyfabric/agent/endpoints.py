"""What an agent declares for a local endpoint, from the policy it resolved.

An agent knows a local endpoint by ``TENANT/NAME`` (OVSDB ``iface-id``). It
resolves the endpoint's intent (``PfEndpoint``: MAC, addresses, EPG, bridge
domain) and then declares it to the endpoint registry as one ``EprL2Ep``
(named by bridge domain and MAC) and one ``EprL3Ep`` per address (named by
routing domain and IP), the libopflex layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from policyfabric.opflex.gbp import endpoint_uri
from policyfabric.opflex.mo import MO, ref
from policyfabric.opflex.uri import EPR_L2, EPR_L3, child


@dataclass(frozen=True)
class Declaration:
    l2: MO
    l3: list[MO]
    bridge_domain: str  # URI

    @property
    def all(self) -> list[MO]:
        return [self.l2, *self.l3]


def target(policy: Mapping[str, MO], uri: str) -> str | None:
    """The target URI of a single-valued relation object."""
    mo = policy.get(uri)
    value = mo.properties.get("target") if mo else None
    return value["reference_uri"] if isinstance(value, dict) else None


def bd_members_prefix(bd_uri: str) -> str:
    """The registry URI prefix of every L2 endpoint on a bridge domain."""
    return child(EPR_L2, "EprL2Ep", bd_uri)


def declaration(
    policy: Mapping[str, MO],
    tenant: str,
    name: str,
    interface: str | None = None,
    tunnel_ip: str | None = None,
) -> Declaration | None:
    """The registry objects for a local endpoint, or None until its policy is resolved.

    Beyond libopflex's properties, the L2 endpoint carries ``tunnelIp`` (where
    other hosts send its traffic) and ``classid`` (its group's class id, so a
    remote host can apply group policy without resolving the group)."""
    ep = policy.get(endpoint_uri(tenant, name))
    if ep is None:
        return None
    props = ep.properties
    bd = props.get("bridgeDomain")
    mac = props.get("mac")
    if not isinstance(bd, dict) or not isinstance(mac, str):
        return None
    bd_uri = bd["reference_uri"]
    common = {"uuid": f"{tenant}/{name}", "mac": mac}
    if isinstance(props.get("epg"), dict):
        common["group"] = props["epg"]
    l2_props = {**common, "context": ref("GbpBridgeDomain", bd_uri), "ip": list(props.get("ip", []))}
    if interface:
        l2_props["interfaceName"] = interface
    if tunnel_ip:
        l2_props["tunnelIp"] = tunnel_ip
    epg = policy.get(props["epg"]["reference_uri"]) if isinstance(props.get("epg"), dict) else None
    if epg is not None:
        for uri in epg.children:
            ctx = policy.get(uri)
            if ctx is not None and ctx.subject == "GbpeInstContext":
                l2_props["classid"] = ctx.properties.get("classid", 0)
    l2 = MO(
        "EprL2Ep", child(EPR_L2, "EprL2Ep", bd_uri, mac), l2_props, [], "EprL2Universe", EPR_L2, "EprL2Ep"
    )
    rd_uri = target(policy, bd_uri + "GbpBridgeDomainToNetworkRSrc/")
    l3 = []
    if rd_uri is not None:
        for ip in props.get("ip", []):
            if ip != "slaac":
                l3.append(
                    MO(
                        "EprL3Ep",
                        child(EPR_L3, "EprL3Ep", rd_uri, ip),
                        {**common, "ip": ip, "context": ref("GbpRoutingDomain", rd_uri)},
                        [],
                        "EprL3Universe",
                        EPR_L3,
                        "EprL3Ep",
                    )
                )
    return Declaration(l2, l3, bd_uri)

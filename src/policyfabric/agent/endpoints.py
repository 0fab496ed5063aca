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
from typing import Any

from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri
from policyfabric.opflex.mo import MO, REFERENCE_URI, ref
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
    value = mo.properties.get(Prop.TARGET) if mo else None
    return value[REFERENCE_URI] if isinstance(value, dict) else None


def bd_members_prefix(bd_uri: str) -> str:
    """The registry URI prefix of every L2 endpoint on a bridge domain."""
    return child(EPR_L2, Cls.EPR_L2_EP, bd_uri)


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
    bd = props.get(Prop.BRIDGE_DOMAIN)
    mac = props.get(Prop.MAC)
    if not isinstance(bd, dict) or not isinstance(mac, str):
        return None
    bd_uri = bd[REFERENCE_URI]
    epg_ref = props.get(Prop.EPG)
    common: dict[str, Any] = {Prop.UUID: f"{tenant}/{name}", Prop.MAC: mac}
    if isinstance(epg_ref, dict):
        common[Prop.GROUP] = epg_ref
    l2_props = {
        **common,
        Prop.CONTEXT: ref(Cls.GBP_BRIDGE_DOMAIN, bd_uri),
        Prop.IP: list(props.get(Prop.IP, [])),
    }
    if interface:
        l2_props[Prop.INTERFACE_NAME] = interface
    if tunnel_ip:
        l2_props[Prop.TUNNEL_IP] = tunnel_ip
    epg = policy.get(epg_ref[REFERENCE_URI]) if isinstance(epg_ref, dict) else None
    if epg is not None:
        for uri in epg.children:
            ctx = policy.get(uri)
            if ctx is not None and ctx.subject == Cls.GBPE_INST_CONTEXT:
                l2_props[Prop.CLASSID] = ctx.properties.get(Prop.CLASSID, 0)
    l2 = MO(
        Cls.EPR_L2_EP,
        child(EPR_L2, Cls.EPR_L2_EP, bd_uri, mac),
        l2_props,
        [],
        Cls.EPR_L2_UNIVERSE,
        EPR_L2,
        Cls.EPR_L2_EP,
    )
    rd_uri = target(policy, child(bd_uri, Cls.GBP_BRIDGE_DOMAIN_TO_NETWORK_RSRC))
    l3 = []
    if rd_uri is not None:
        for ip in props.get(Prop.IP, []):
            if ip != "slaac":
                l3.append(
                    MO(
                        Cls.EPR_L3_EP,
                        child(EPR_L3, Cls.EPR_L3_EP, rd_uri, ip),
                        {**common, Prop.IP: ip, Prop.CONTEXT: ref(Cls.GBP_ROUTING_DOMAIN, rd_uri)},
                        [],
                        Cls.EPR_L3_UNIVERSE,
                        EPR_L3,
                        Cls.EPR_L3_EP,
                    )
                )
    return Declaration(l2, l3, bd_uri)

"""The GBP and Pf vocabulary: class names, property names and URIs that cross the wire.

One module read by both sides, so the authority that writes the managed
objects (``authority/opflex/policy_tree.py``, the server) and the agents that
read them (``agent/reader.py``, ``agent/endpoints.py``) cannot drift apart: a
misspelt name is an ``AttributeError`` (and a mypy error), not an object
silently missing from a view. The strings themselves are the wire format:
libopflex peers and recorded exchanges depend on every byte, so they never
change here.

Class names follow the GBP model of the open-source OpFlex agent
(``GbpEpGroup``, ``GbpBridgeDomain``, ``GbpContract`` ...). Objects GBP has no
class for get a ``Pf`` prefix, listed in docs/opflex.md. Each constant is
named after its wire string in upper snake case (``GbpEpGroup`` is
``Cls.GBP_EP_GROUP``, ``encapId`` is ``Prop.ENCAP_ID``), so either one finds
the other with grep.

This module imports nothing from the authority or the agent: both import it.
"""

from __future__ import annotations

from typing import Final

from policyfabric.opflex.uri import UNIVERSE, child, space


class Cls:
    """Class names: an MO's ``subject`` (and its ``parent_relation``)."""

    POLICY_UNIVERSE: Final = "PolicyUniverse"
    POLICY_SPACE: Final = "PolicySpace"  # one per tenant
    # forwarding
    GBP_ROUTING_DOMAIN: Final = "GbpRoutingDomain"  # an l3_context
    GBP_BRIDGE_DOMAIN: Final = "GbpBridgeDomain"
    GBP_BRIDGE_DOMAIN_TO_NETWORK_RSRC: Final = "GbpBridgeDomainToNetworkRSrc"  # → its routing domain
    GBP_FORWARDING_BEHAVIORAL_GROUP_TO_SUBNETS_RSRC: Final = "GbpForwardingBehavioralGroupToSubnetsRSrc"
    GBP_SUBNETS: Final = "GbpSubnets"  # a container of GbpSubnet
    GBP_SUBNET: Final = "GbpSubnet"
    GBPE_INST_CONTEXT: Final = "GbpeInstContext"  # encapId (VNI) and classid
    # groups and contracts
    GBP_EP_GROUP: Final = "GbpEpGroup"
    GBP_EP_GROUP_TO_NETWORK_RSRC: Final = "GbpEpGroupToNetworkRSrc"  # → its bridge domain
    GBP_EP_GROUP_TO_PROV_CONTRACT_RSRC: Final = "GbpEpGroupToProvContractRSrc"
    GBP_EP_GROUP_TO_CONS_CONTRACT_RSRC: Final = "GbpEpGroupToConsContractRSrc"
    GBP_CONTRACT: Final = "GbpContract"
    # under a GbpContract, one per group providing (consuming) it, named by the group's class and URI,
    # its ``source`` a reference to the group: the reverse of the group's relation, so that an agent
    # resolving a contract learns the groups on its other side (the reference keeps its ``*RTgt``
    # objects inside its own MODB; these are ours, on the wire)
    PF_EP_GROUP_TO_PROV_CONTRACT_RTGT: Final = "PfEpGroupToProvContractRTgt"
    PF_EP_GROUP_TO_CONS_CONTRACT_RTGT: Final = "PfEpGroupToConsContractRTgt"
    GBP_SUBJECT: Final = "GbpSubject"
    GBP_RULE: Final = "GbpRule"
    GBP_RULE_TO_CLASSIFIER_RSRC: Final = "GbpRuleToClassifierRSrc"
    GBP_RULE_TO_ACTION_RSRC: Final = "GbpRuleToActionRSrc"
    GBPE_L24_CLASSIFIER: Final = "GbpeL24Classifier"
    GBP_ALLOW_DENY_ACTION: Final = "GbpAllowDenyAction"
    GBP_LOG_ACTION: Final = "GbpLogAction"
    # security groups
    GBP_SEC_GROUP: Final = "GbpSecGroup"
    GBP_SEC_GROUP_SUBJECT: Final = "GbpSecGroupSubject"
    GBP_SEC_GROUP_RULE: Final = "GbpSecGroupRule"
    GBP_SEC_GROUP_RULE_TO_REMOTE_ADDRESS_RSRC: Final = "GbpSecGroupRuleToRemoteAddressRSrc"
    # → the GbpSecGroup whose members the rule's remote-address set is (our agents' hint to keep
    # it as an address set; the restriction itself is the model's GbpSecGroupRuleToRemoteAddressRSrc)
    PF_SEC_GROUP_RULE_TO_REMOTE_GROUP_RSRC: Final = "PfSecGroupRuleToRemoteGroupRSrc"
    GBP_FLOOD_DOMAIN: Final = "GbpFloodDomain"  # EPG → flood domain → bridge domain (the reference's)
    GBP_FLOOD_DOMAIN_TO_NETWORK_RSRC: Final = "GbpFloodDomainToNetworkRSrc"
    PLATFORM_CONFIG: Final = "PlatformConfig"  # under the universe, named by the agent's domain
    # endpoints, routers, external networks
    PF_ENDPOINT: Final = "PfEndpoint"  # an endpoint's intent
    PF_ROUTER: Final = "PfRouter"
    PF_ROUTER_TO_ROUTING_DOMAIN_RSRC: Final = "PfRouterToRoutingDomainRSrc"
    PF_ROUTER_INTERFACE: Final = "PfRouterInterface"
    # under a GbpBridgeDomain, one per router with a leg on it, named by the router's class and URI,
    # its ``source`` a reference to the router: how an agent finds the routers of its bridge domains
    PF_ROUTER_TO_BRIDGE_DOMAIN_RTGT: Final = "PfRouterToBridgeDomainRTgt"
    PF_EXTERNAL_GATEWAY: Final = "PfExternalGateway"
    PF_FLOATING_IP: Final = "PfFloatingIp"
    PF_EXTERNAL_NETWORK: Final = "PfExternalNetwork"  # global: under the PolicyUniverse
    # what a host's DHCP responder answers with (the reference agent reads these from its endpoint
    # files instead): a subnet's DHCP options, a bridge domain's MTU
    PF_SUBNET_DHCP: Final = "PfSubnetDhcp"  # under a GbpSubnet
    PF_BRIDGE_DOMAIN_MTU: Final = "PfBridgeDomainMtu"  # under a GbpBridgeDomain
    PF_REVISION: Final = "PfRevision"  # under a PolicySpace: the store revision its tree reflects
    # the endpoint registry (libopflex's layout)
    EPR_L2_UNIVERSE: Final = "EprL2Universe"
    EPR_L2_EP: Final = "EprL2Ep"
    EPR_L3_UNIVERSE: Final = "EprL3Universe"
    EPR_L3_EP: Final = "EprL3Ep"
    EPR_L3_NET: Final = "EprL3Net"  # under an EprL2Ep: one of its addresses (the model's)
    PF_EP_TUNNEL: Final = "PfEpTunnel"  # under an EprL2Ep: where to send its traffic (ours)
    # what the reference agent declares under its endpoints (accepted, not stored)
    EPR_SECURITY_GROUP_CONTEXT: Final = "EprSecurityGroupContext"
    GBPE_REPORTED_EP_ATTRIBUTE_SET: Final = "GbpeReportedEpAttributeSet"
    GBPE_REPORTED_EP_ATTRIBUTE: Final = "GbpeReportedEpAttribute"
    # observables (state_report)
    PF_ENDPOINT_STATUS: Final = "PfEndpointStatus"
    PF_FAULT: Final = "PfFault"
    PF_AGENT_COUNTERS: Final = "PfAgentCounters"
    PF_GATEWAY_PORTS: Final = "PfGatewayPorts"
    PF_RENDERED_REVISION: Final = "PfRenderedRevision"  # the revision an agent's flows reflect
    # the reference agent's observables
    FAULT_INSTANCE: Final = "FaultInstance"
    GBPE_EP_COUNTER: Final = "GbpeEpCounter"


# The classes policyfabric adds beyond the reference model, each made so that a peer that drops it
# (libopflex drops classes it does not know) is given less, never more (docs/opflex.md, "The model
# as managed objects"): every other class and property on the wire is the model's, with its types,
# which tests/test_modelcheck.py holds against modelgbp.json.
EXTENSIONS: frozenset[str] = frozenset(
    {
        Cls.PF_ENDPOINT,  # an endpoint's intent: without it, no endpoint to enforce for
        Cls.PF_ROUTER,  # routers, their legs and gateways: without them, nothing routed across them
        Cls.PF_ROUTER_TO_ROUTING_DOMAIN_RSRC,
        Cls.PF_ROUTER_INTERFACE,
        Cls.PF_ROUTER_TO_BRIDGE_DOMAIN_RTGT,  # reverse relations: without them, an agent resolving by
        Cls.PF_EP_GROUP_TO_PROV_CONTRACT_RTGT,  # need misses the routers of its bridge domains and
        Cls.PF_EP_GROUP_TO_CONS_CONTRACT_RTGT,  # the other side of its contracts (a reference agent
        # keeps these in its own MODB)
        Cls.PF_EXTERNAL_GATEWAY,
        Cls.PF_FLOATING_IP,  # without it, no floating IP
        Cls.PF_EXTERNAL_NETWORK,  # without it, no way out
        Cls.PF_SUBNET_DHCP,  # without them, a peer answers no DHCP from the intent (its own files)
        Cls.PF_BRIDGE_DOMAIN_MTU,
        Cls.PF_SEC_GROUP_RULE_TO_REMOTE_GROUP_RSRC,  # a hint: the rule's remote addresses are the model's
        Cls.PF_EP_TUNNEL,  # without it, a remote endpoint cannot be reached
        Cls.PF_ENDPOINT_STATUS,  # observables, from our agents only
        Cls.PF_FAULT,
        Cls.PF_AGENT_COUNTERS,
        Cls.PF_GATEWAY_PORTS,
        Cls.PF_REVISION,  # a peer that drops it only cannot say which revision it rendered
        Cls.PF_RENDERED_REVISION,
    }
)


class Prop:
    """Property names, by the classes that carry them."""

    NAME: Final = "name"  # most classes
    TARGET: Final = "target"  # every *RSrc relation: a reference
    SOURCE: Final = "source"  # every *RTgt relation: a reference to the object whose relation it reverses
    # GbpBridgeDomain
    ROUTING_MODE: Final = "routingMode"
    # GbpeInstContext
    ENCAP_ID: Final = "encapId"  # a VNI
    CLASSID: Final = "classid"  # an endpoint group's class id (also on EprL2Ep)
    # GbpSubnet
    ADDRESS: Final = "address"
    PREFIX_LEN: Final = "prefixLen"
    VIRTUAL_ROUTER_IP: Final = "virtualRouterIp"  # the subnet's gateway
    IPV6_ADV_AUTONOMOUS_FLAG: Final = "ipv6AdvAutonomousFlag"
    # GbpEpGroup
    INTRA_GROUP_POLICY: Final = "intraGroupPolicy"  # allow | deny
    # GbpRule, GbpSecGroupRule
    ORDER: Final = "order"
    DIRECTION: Final = "direction"
    # GbpAllowDenyAction
    ALLOW: Final = "allow"  # 1 | 0
    # GbpeL24Classifier
    CONNECTION_TRACKING: Final = "connectionTracking"
    ETHER_T: Final = "etherT"
    PROT: Final = "prot"
    D_FROM_PORT: Final = "dFromPort"
    D_TO_PORT: Final = "dToPort"
    ICMP_TYPE: Final = "icmpType"  # the model's (U64; 0-255 here), absent: any type
    ICMP_CODE: Final = "icmpCode"  # absent: any code
    # PfEndpoint (and mac/ip on the registry's endpoints)
    MAC: Final = "mac"
    IP: Final = "ip"  # a list on PfEndpoint and EprL2Ep; one address elsewhere
    EPG: Final = "epg"
    BRIDGE_DOMAIN: Final = "bridgeDomain"
    SECURITY_GROUP: Final = "securityGroup"  # a list of references
    HOST: Final = "host"
    FLOATING_IP: Final = "floatingIp"  # a list of references: the PfFloatingIps bound to the endpoint
    # PfEndpoint: its allowed address pairs, a list of "PREFIX MAC" (an address as its /32 or /128;
    # MAC: the endpoint's own when the pair names none); absent: none
    ALLOWED_ADDRESS_PAIRS: Final = "allowedAddressPairs"
    # PfFloatingIp, PfEndpointStatus
    ENDPOINT: Final = "endpoint"  # TENANT/NAME, or a reference on PfFloatingIp
    # PfRouterInterface (and BRIDGE_DOMAIN: a reference to its subnet's bridge domain)
    SUBNET: Final = "subnet"
    # PfExternalGateway, PfFloatingIp
    NETWORK: Final = "network"  # a reference to a PfExternalNetwork
    SNAT: Final = "snat"
    HOSTS: Final = "hosts"  # the gateway hosts, in order of preference
    ACTIVE_HOST: Final = "activeHost"  # the authority's election
    ACTIVE_TUNNEL_IP: Final = "activeTunnelIp"
    ENDPOINT_KEY: Final = "endpointKey"  # TENANT/NAME
    # PfSubnetDhcp, PfBridgeDomainMtu
    ENABLE_DHCP: Final = "enableDhcp"  # 1 | 0
    DNS_NAMESERVERS: Final = "dnsNameservers"  # a list of addresses
    HOST_ROUTES: Final = "hostRoutes"  # a list of "DESTINATION NEXTHOP"
    IPV6_RA_MODE: Final = "ipv6RaMode"  # slaac | dhcpv6-stateless | dhcpv6-stateful (absent: none)
    IPV6_ADDRESS_MODE: Final = "ipv6AddressMode"  # the same values
    MTU: Final = "mtu"
    # PfExternalNetwork
    CIDR: Final = "cidr"
    GATEWAY_IP: Final = "gatewayIp"
    PHYSICAL_NETWORK: Final = "physicalNetwork"
    # EprL2Ep, EprL3Ep
    UUID: Final = "uuid"  # TENANT/NAME
    GROUP: Final = "group"
    CONTEXT: Final = "context"  # its bridge domain (L2) or routing domain (L3)
    INTERFACE_NAME: Final = "interfaceName"
    VM_NAME: Final = "vmName"  # the reference agent's, from its endpoint file
    TUNNEL_IP: Final = "tunnelIp"  # also on PfGatewayPorts
    # PfEndpointStatus
    STATUS: Final = "status"
    # PfFault
    CODE: Final = "code"
    SEVERITY: Final = "severity"
    DESCRIPTION: Final = "description"
    URI: Final = "uri"
    # FaultInstance (the reference agent's faults)
    FAULT_CODE: Final = "faultCode"
    AFFECTED_OBJECT: Final = "affectedObject"
    # PfGatewayPorts
    EXTERNAL_NETWORKS: Final = "externalNetworks"
    # PfRevision, PfRenderedRevision
    REVISION: Final = "revision"


# etherT is an enum of the reference model (l2/EtherType): sent by constant name, as libopflex
# serialises enums; a number there is dropped by a reference peer without a word.
ETHER_T_NAMES = {"ipv4": 0x0800, "ipv6": 0x86DD}  # etherT on the wire → ethertype (the two rules use)
# A security group's member set (GbpSubnets) always holds this one address, which no packet carries
# as its source or destination: a reference peer, for which an empty remote-address set means "any
# address", still matches nothing when the group has no members (fails closed).
NO_MEMBER = "255.255.255.255"
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}  # the model's protocol → prot


def uri_of(tenant: str, cls: str, name: str) -> str:
    """The URI of a ``cls`` object named ``name`` right under ``tenant``'s PolicySpace."""
    return child(space(tenant), cls, name)


def external_network_uri(name: str) -> str:
    return child(UNIVERSE, Cls.PF_EXTERNAL_NETWORK, name)


def endpoint_uri(tenant: str, name: str) -> str:
    return uri_of(tenant, Cls.PF_ENDPOINT, name)


def members_uri(tenant: str, group: str) -> str:
    """The GbpSubnets that holds a security group's member addresses (a name no object can have:
    names are DNS labels, without dots)."""
    return uri_of(tenant, Cls.GBP_SUBNETS, f"sg.{group}.members")


__all__ = [
    "ETHER_T_NAMES",
    "EXTENSIONS",
    "NO_MEMBER",
    "PROTOCOLS",
    "Cls",
    "Prop",
    "endpoint_uri",
    "external_network_uri",
    "members_uri",
    "uri_of",
]

"""The agent's side of ``pf_trace`` (opflex/trace.py): one hop of ``explain`` on a running fabric.

The authority asks the agent of the source endpoint, then the agent of each host the packet
tunnels to. The agent answers from what *it has installed*, never from the intent:

- the packet: a probe's first packet built from the view the agent renders (the source
  endpoint's port, MAC and address; the destination's MAC when an endpoint of the same bridge
  domain holds the address, else the MAC of the router serving the source's subnet: what the
  endpoint's own ARP would find), or the packet arriving from the tunnel, as the previous hop
  gave it;
- Open vSwitch's own trace of ``br-int`` (``ofproto/trace``, every ``ct()`` a new connection),
  named flow by flow through the cookies and conjunction ids of the view (``agent/explain``);
- on an nftables host, the table read back from the kernel and evaluated for the packet as it
  enters the source's bridge and as it leaves for the destination's (renderers/nftables/explain).

Bounds: every value was parsed by ``opflex/trace`` before it is formatted into the trace command
(addresses, MACs and numbers re-printed from their parsed form; the port and bridge are the
agent's own); one trace at a time (a second, asked while one runs, is refused at once: "busy
tracing"); every command killed after what is left of ``timeout`` seconds; an output over
``MAX_OUTPUT`` refused whole ("cannot trace"), never cut (a cut trace or cut JSON would mislead).
The trace runs in a task of its own (``opflex.rpc.Later``) and every command in a thread, so the
session's reader and the agent's event loop go on meanwhile: policy pushes are applied while a
trace runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from policyfabric.agent.explain import (
    Catalog,
    Hop,
    allow_reason,
    arrival_fields,
    deny_reason,
    flow_text,
    hop_of,
    parse_trace,
)
from policyfabric.agent.renderers.nftables import explain as nft
from policyfabric.agent.renderers.nftables.ruleset import TABLE, bridge_of
from policyfabric.agent.renderers.ovs.conjunctions import conj_id
from policyfabric.agent.renderers.ovs.secgroups import sg_conj_id
from policyfabric.agent.renderers.ovs.sections import SectionKey
from policyfabric.agent.view import Endpoint, Network
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.trace import BadTrace, Request
from policyfabric.opflex.uri import unescape
from policyfabric.opflex.wire import Code
from policyfabric.sh import CommandFailed, run

TIMEOUT = 5.0  # seconds a trace may take, every command of it together
MAX_OUTPUT = 4 << 20  # characters of a command's output past which the host does not trace (a frame's limit)
SOURCE_PORT = 40000  # the probe's source port (no flow matches on it)
WHOLE_TABLE_MAX = 2000  # rules + set elements of the applied table up to which it is listed whole


class TooLarge(Exception):
    """A command's output is over ``MAX_OUTPUT``: the host says it cannot trace rather than cut it."""


def _bounded(out: str) -> str:
    if len(out) > MAX_OUTPUT:
        raise TooLarge(f"{len(out)} characters of output, over {MAX_OUTPUT}")
    return out


class NoRoute(Exception):
    """The source has nothing to send the packet to (no endpoint of its bridge domain holds the
    address, no router serves its subnet): decided before the bridge."""


def _name(uri: str) -> str:
    parts = uri.strip("/").split("/")
    return f"{unescape(parts[2])}/{unescape(parts[4])}" if len(parts) >= 5 else uri


def catalog_of(net: Network) -> Catalog:
    """Cookie → intent object and conjunction id → rule, from the view the agent renders: the
    section keys and conjunction ids its compilers make (``sections``, ``group_policy``,
    ``secgroups``), so a cookie is named exactly as it was made."""
    cat = Catalog()
    cat.add(("base",), "fixed flows")
    add: list[tuple[SectionKey, str]] = []
    add += [(("ep", e.key), f"endpoint {e.key}") for e in net.local]
    add += [(("remote", e.key), f"endpoint {e.key} (remote)") for e in net.remote]
    add += [(("bd", uri), f"bridge-domain {_name(uri)}") for uri in net.bds]
    add += [(("router", uri), f"router {_name(uri)}") for uri in net.routers]
    add += [(("group", uri), f"endpoint-group {_name(uri)}") for uri in net.groups]
    add += [(("contract", uri), f"contract {_name(uri)}") for uri in net.contracts]
    add += [(("sg", uri), f"security-group {_name(uri)}") for uri in net.security_groups]
    add += [(("extnet", uri), f"external-network {x.name}") for uri, x in net.external.items()]
    add += [(("fip", str(f.ip)), f"floating-ip {f.ip} of {f.endpoint}") for f in net.floating_ips]
    for key, name in add:
        cat.add(key, name)
    for uri, contract in net.contracts.items():
        for rule in contract.rules:
            for n in ("0", "1"):
                cid = conj_id(uri, rule.key, n, str(rule.ethertype), str(rule.protocol), str(rule.ports))
                cat.rules[cid] = f"contract {_name(uri)} rule {rule.key.partition('.')[2]}"
    for sg in net.security_groups.values():
        for r in sg.rules:
            cat.rules[sg_conj_id(r)] = f"security-group {_name(sg.uri)} rule {r.key.rpartition('#')[2]}"
    return cat


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def first_packet(net: Network, req: Request) -> tuple[Endpoint, str, nft.Packet]:
    """(the source endpoint, its probe's first packet in ``ofproto/trace`` syntax, the same packet
    for nftables). Raises BadTrace when the source is not plugged here, NoRoute when it has
    nowhere to send the packet."""
    assert req.source is not None and req.destination is not None and req.probe is not None
    src = next((e for e in net.local if e.key == req.source), None)
    if src is None or src.ofport is None:
        raise BadTrace("from", f"{req.source} is not plugged on host {net.host}")
    probe, dst = req.probe, req.destination
    addrs = [ipaddress.ip_address(a) for a in src.ips]
    src_ip = next((a for a in addrs if a.version == dst.version), None)
    if src_ip is None:
        raise BadTrace("from", f"{req.source} has no IPv{dst.version} address")
    peer = next(
        (
            e
            for e in (*net.local, *net.remote)
            if e.bd == src.bd and any(_same_ip(i, str(dst)) for i in e.ips)
        ),
        None,
    )
    if peer is not None:
        mac = peer.mac
    else:
        legs = [
            (r.mac, leg.prefix)
            for r in net.routers.values()
            for leg in r.interfaces
            if leg.bd == src.bd and src_ip in ipaddress.ip_network(leg.prefix, strict=False)
        ]
        if not legs:
            raise NoRoute(
                f"no endpoint of {req.source}'s bridge domain has {dst}, and no router serves its subnet"
            )
        mac = legs[0][0]
    v6 = dst.version == 6
    l3 = f"ipv6_src={src_ip},ipv6_dst={dst}" if v6 else f"nw_src={src_ip},nw_dst={dst}"
    if probe.kind == "icmp":
        word, l4 = ("icmp6", "icmpv6_type=128,icmpv6_code=0") if v6 else ("icmp", "icmp_type=8,icmp_code=0")
        packet = nft.Packet("", v6, str(src_ip), str(dst), 58 if v6 else 1, icmp_type=128 if v6 else 8)
    elif probe.kind == "tcp":
        word, l4 = ("tcp6" if v6 else "tcp"), f"tp_src={SOURCE_PORT},tp_dst={probe.port},tcp_flags=0x002"
        packet = nft.Packet("", v6, str(src_ip), str(dst), 6, dport=probe.port)
    else:
        word, l4 = ("udp6" if v6 else "udp"), f"udp_src={SOURCE_PORT},udp_dst={probe.port}"
        packet = nft.Packet("", v6, str(src_ip), str(dst), 17, dport=probe.port)
    flow = f"{word},in_port={src.ofport},dl_src={src.mac},dl_dst={mac},{l3},nw_ttl=64,{l4}"
    return src, flow, packet


def leaving_packet(final: dict[str, str], protocol: str) -> nft.Packet | None:
    """The packet as the trace left it (its "Final flow"), for the destination's nftables chain."""
    v6 = protocol.endswith("6") or protocol == "ipv6"
    src, dst = (
        (final.get("ipv6_src"), final.get("ipv6_dst")) if v6 else (final.get("nw_src"), final.get("nw_dst"))
    )
    if src is None or dst is None:
        return None
    word = protocol.removesuffix("6")
    l4 = {"tcp": 6, "udp": 17, "icmp": 58 if v6 else 1}.get(word, 0)
    port = final.get("tp_dst")
    icmp = final.get("icmp_type") if word == "icmp" else None
    return nft.Packet(
        "", v6, src, dst, l4, dport=int(port) if port and word in ("tcp", "udp") else None,
        icmp_type=int(icmp) if icmp is not None else None,
    )  # fmt: skip


@dataclass
class NftStep:
    chain: str
    index: int
    label: str
    verdict: str


def _nft_steps(verdict: nft.Verdict, net: Network, applied: Any) -> list[NftStep]:
    steps = [NftStep(c, i, nft.label(c, i, net, applied), "match") for c, i in verdict.path]
    if steps:
        steps[-1].verdict = verdict.verdict
    return steps


class TraceService:
    """``pf_trace`` for one agent: ``await service(params)`` → one hop's answer (see module doc)."""

    def __init__(
        self,
        host: str,
        bridge: str,
        appctl: list[str],
        network: Callable[[], Network | None],
        tunnel_ip: str | None,
        nftables: Any = None,  # the agent's NftablesRenderer (its ``netns``, its ``applied`` ruleset)
        timeout: float = TIMEOUT,
    ) -> None:
        self.host, self.bridge, self.appctl = host, bridge, appctl
        self.network, self.tunnel_ip, self.nftables = network, tunnel_ip, nftables
        self.timeout = timeout
        self._one = asyncio.Lock()

    async def __call__(self, params: list[Any]) -> dict[str, Any]:
        try:
            req = Request.parse(params)
        except BadTrace as exc:
            raise RpcError(Code.ERROR, f"Malformed message: {exc}") from None
        net = self.network()
        if net is None:
            raise RpcError(Code.ERROR, f"host {self.host} has not rendered anything yet")
        if self._one.locked():  # refused, not queued: the authority's timer runs meanwhile
            raise RpcError(Code.ERROR, f"host {self.host} is busy tracing")
        deadline = time.monotonic() + self.timeout
        async with self._one:
            try:
                return await self._hop(net, req, deadline)
            except BadTrace as exc:
                raise RpcError(Code.ERROR, str(exc)) from None
            except (
                CommandFailed, subprocess.TimeoutExpired, nft.Unevaluable, json.JSONDecodeError, TooLarge
            ) as exc:  # fmt: skip
                raise RpcError(Code.ERROR, f"host {self.host} cannot trace: {exc}") from None

    async def _run(self, argv: list[str], deadline: float, netns: str | None = None) -> str:
        left = max(0.1, deadline - time.monotonic())
        return _bounded(await asyncio.to_thread(run, argv, netns=netns, timeout=left))

    def _table(self, deadline: float) -> nft.Table:
        """(Blocking: run it in a thread.) The installed table: listed whole in one ``nft`` when the
        applied one is small (a process each is most of the cost there: 2 endpoints, 32 ms an
        explain whole against 75 ms object by object, measured), else object by object as the walk
        needs it (at 1,000 endpoints the whole table is 4 MB of JSON and 1.4-2.0 s to list, one
        chain 10-50 ms). In the renderer's namespace, each ``nft`` within what is left of the
        deadline."""
        assert self.nftables is not None
        netns = self.nftables.netns

        def listing(*what: str) -> dict[str, Any]:
            left = max(0.1, deadline - time.monotonic())
            try:
                out = run(["nft", "-j", "list", *what], netns=netns, timeout=left)
            except CommandFailed:
                return {}  # not in the table: the walk says so
            doc: dict[str, Any] = json.loads(_bounded(out))
            return doc

        table = nft.Table(lambda kind, name: listing(kind, "inet", TABLE, name))
        applied = self.nftables.applied
        if applied is not None and applied.rules + applied.elements <= WHOLE_TABLE_MAX:
            table.absorb(listing("table", "inet", TABLE))
        return table

    async def _evaluate(self, table: nft.Table, packet: nft.Packet) -> nft.Verdict:
        return await asyncio.to_thread(nft.evaluate, table, packet)  # it lists what it walks

    async def _hop(self, net: Network, req: Request, deadline: float) -> dict[str, Any]:
        cat = catalog_of(net)
        nft_steps: list[NftStep] = []
        table: nft.Table | None = None
        applied = self.nftables.applied if self.nftables is not None else None
        if req.fields is not None:
            flow = flow_text(req.protocol, req.fields)
        else:
            try:
                src, flow, packet = first_packet(net, req)
            except NoRoute as exc:
                return self._answer(Hop(self.host, (), "none"), cat, f"no route ({exc})", [], None)
            bridge = bridge_of(src.interface)
            if self.nftables is not None and bridge is not None:  # it crosses its own bridge first
                table = await asyncio.to_thread(self._table, deadline)
                verdict = await self._evaluate(table, _on(replace(packet, ether_src=src.mac), bridge))
                nft_steps = _nft_steps(verdict, net, applied)
                if verdict.verdict == "drop":
                    why = nft.label(verdict.chain, verdict.index, net, applied)
                    return self._answer(Hop(self.host, (), "drop"), cat, why, [], None, nft_steps)
        new = ("--ct-next", "trk,new")  # every ct() recirculation: a new connection (a probe's first packet)
        argv = [*self.appctl, "ofproto/trace", self.bridge, flow, *new, *new]
        before = len(nft_steps)  # the source's bridge is crossed before br-int
        parsed = parse_trace(await self._run(argv, deadline), self.bridge)
        hop = hop_of(self.host, parsed)
        drop = next((deny_reason(s, cat) for s in hop.steps if s.drops), None)
        allows = [r for s in hop.steps if (r := allow_reason(s, cat)) is not None]
        allows = [*nft.allows([(s.chain, s.index) for s in nft_steps], net, applied), *allows]
        out = hop.outcome.removeprefix("output:")
        dst = next((e for e in net.local if hop.outcome.startswith("output:") and str(e.ofport) == out), None)
        bridge = bridge_of(dst.interface) if dst is not None else None
        if drop is None and self.nftables is not None and bridge is not None:  # and its bridge last
            leaving = leaving_packet(parsed.final, parsed.protocol)
            if leaving is not None:
                if table is None:
                    table = await asyncio.to_thread(self._table, deadline)
                leaving = replace(leaving, ether_src=parsed.final.get("dl_src"))  # from br-int: which port
                verdict = await self._evaluate(table, _on(leaving, bridge))
                steps = _nft_steps(verdict, net, applied)
                nft_steps += steps
                if verdict.verdict == "drop":
                    drop = nft.label(verdict.chain, verdict.index, net, applied)
                else:
                    allows += nft.allows([(s.chain, s.index) for s in steps], net, applied)
        nxt = None
        if hop.outcome == "tunnel" and drop is None:
            proto, fields = arrival_fields(parsed, self.tunnel_ip or "0.0.0.0")
            nxt = {"tun_dst": parsed.writes.get("tun_dst", ""), "arrival": {"protocol": proto, **fields}}
        return self._answer(hop, cat, drop, allows, nxt, nft_steps, before)

    def _answer(
        self,
        hop: Hop,
        cat: Catalog,
        drop: str | None,
        allows: list[str],
        nxt: dict[str, Any] | None,
        nft_steps: Sequence[NftStep] = (),
        before: int | None = None,
    ) -> dict[str, Any]:
        """One hop's answer; its flows in the order the packet met them: the nftables rules of the
        source's bridge (``nft_steps[:before]``), br-int's flows, those of the destination's bridge."""
        rules = [
            {"table": f"nftables {s.chain}", "match": f"rule {s.index}", "priority": None, "from": s.label,
             "actions": [s.verdict]}
            for s in nft_steps
        ]  # fmt: skip
        split = len(rules) if before is None else before
        flows = [*rules[:split], *hop.to_json(cat)["flows"], *rules[split:]]
        renderer = "nftables" if self.nftables is not None else "ovs"
        return {
            "host": self.host,
            "renderer": renderer,
            "outcome": hop.outcome,
            "drop": drop,
            "allows": list(dict.fromkeys(allows)),
            "flows": flows,
            "next": nxt,
        }


def _on(packet: nft.Packet, bridge: str) -> nft.Packet:
    return replace(packet, iifname=bridge)


def appctl_target(ovsdb: str) -> list[str]:
    """``ovs-appctl`` and its ``-t`` for the ``ovs-vswitchd`` beside the OVSDB socket (a private
    run directory, as the lab's): its ``ovs-vswitchd.ctl``, or ``ovs-vswitchd.PID.ctl`` by its pid
    file; the system's default target otherwise."""
    if ovsdb.startswith("unix:"):
        rundir = Path(ovsdb[5:]).parent
        ctl = rundir / "ovs-vswitchd.ctl"
        if ctl.exists():
            return ["ovs-appctl", "-t", str(ctl)]
        pidfile = rundir / "ovs-vswitchd.pid"
        if pidfile.exists():
            pid = pidfile.read_text().strip()
            if pid.isdigit() and (rundir / f"ovs-vswitchd.{pid}.ctl").exists():
                return ["ovs-appctl", "-t", str(rundir / f"ovs-vswitchd.{pid}.ctl")]
    return ["ovs-appctl"]


def for_agent(
    config: Any, network: Callable[[], Network | None], plugins: list[tuple[str, Any]]
) -> TraceService:
    """The service of an Open vSwitch agent (``config``: its ``AgentConfig``) and its nftables
    plug-in, if it has one."""
    tables = [r for name, r in plugins if name == "nftables"]
    appctl = appctl_target(config.ovsdb)
    nftables = tables[0] if tables else None
    return TraceService(config.host, config.bridge, appctl, network, config.tunnel_ip, nftables)

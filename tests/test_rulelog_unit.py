"""Rule logging without Open vSwitch: the compiled pipeline on the fake switch sends a copy of the
first packet of a connection a logging rule decides (allowed or dropped), with userdata naming
the rule; the agent's namer turns it into the intent's name; the controller action encodes as
OVS reads it; the sink keeps to its rate. Real packets: test_rulelog_dataplane.py."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

from policyfabric.agent.renderers.logcodes import parse_prefix, prefix
from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.agent.renderers.ovs.logflows import (
    DEFAULT_DENY_IN,
    DEFAULT_DENY_OUT,
    LOG_CONTROLLER_ID,
    LOG_METER,
    RULE,
    Decided,
    decode_userdata,
    log_action,
    rule_id,
)
from policyfabric.agent.renderers.ovs.rulelog import NXT_PACKET_IN2, decode_packet_in2
from policyfabric.agent.rulelog import Namer, Packet, Sink, TokenBucket, parse_packet, read_lines
from policyfabric.agent.view import Network
from tests import fabric
from tests.fabric import TCP, endpoint, ip_packet, mac, reply, security_group, sg_rule
from tests.test_pipeline_unit import APP, APP1, BD, WEB, WEB1

HTTP_URI = "/PolicyUniverse/PolicySpace/acme/GbpContract/http/"
SG_URI = "/PolicyUniverse/PolicySpace/acme/GbpSecGroup/ssh/"


def userdata_of(action: str) -> Decided | None:
    parsed = w.parse_action(action)
    assert isinstance(parsed, w.Controller)
    assert parsed.controller_id == LOG_CONTROLLER_ID and parsed.meter_id == LOG_METER
    return decode_userdata(parsed.userdata)


def contract_net(allow: bool = True, log: bool = True) -> Network:
    http = fabric.contract(
        HTTP_URI, replace(fabric.rule("http.web-in", protocol=TCP, ports=80, allow=allow), log=log)
    )
    web = replace(WEB, provides=(HTTP_URI,))
    app = replace(APP, consumes=(HTTP_URI,))
    return fabric.network(local=[WEB1, APP1], groups=[web, app], contracts=[http], bds=[BD])


def test_a_logged_allow_rule_copies_the_first_packet_only() -> None:
    sw = fabric.switch(contract_net())
    first = sw.send(ip_packet(APP1, WEB1, dport=80))
    assert first.ports == [1]  # still allowed: the copy is not an output
    assert [userdata_of(a) for a in first.logged] == [Decided(RULE, True, rule_id(HTTP_URI, "http.web-in"))]
    assert sw.send(reply(ip_packet(APP1, WEB1, dport=80), in_port=1)).logged == []  # established
    assert sw.send(ip_packet(APP1, WEB1, dport=80)).logged == []  # the same connection again


def test_a_logged_deny_rule_drops_and_copies() -> None:
    sw = fabric.switch(contract_net(allow=False))
    result = sw.send(ip_packet(APP1, WEB1, dport=80))
    assert result.dropped
    assert [userdata_of(a) for a in result.logged] == [Decided(RULE, False, rule_id(HTTP_URI, "http.web-in"))]


def test_rules_without_log_send_nothing() -> None:
    sw = fabric.switch(contract_net(log=False))
    assert sw.send(ip_packet(APP1, WEB1, dport=80)).logged == []
    assert not any("controller(" in a for f in sw.flows() for a in f.actions)


def sg_net() -> tuple[Network, object, object]:
    ssh = security_group(SG_URI, replace(sg_rule(f"{SG_URI}#0", protocol=TCP, ports=22), log=True))
    vm1 = endpoint("vm1", mac(1, 1), "10.0.0.1", bd=BD, ofport=11, security_groups=(SG_URI,))
    vm2 = endpoint("vm2", mac(2, 1), "10.0.0.2", bd=BD, ofport=12, security_groups=(SG_URI,))
    net = fabric.network(local=[vm1, vm2], bds=[BD], security_groups=[ssh])
    return net, vm1, vm2


def test_a_logging_security_group_logs_its_rules_and_its_default_deny() -> None:
    net, vm1, vm2 = sg_net()
    sw = fabric.switch(net)
    allowed = sw.send(ip_packet(vm2, vm1, dport=22))  # type: ignore[arg-type]
    assert allowed.ports == [11]
    assert [userdata_of(a) for a in allowed.logged] == [Decided(RULE, True, rule_id(f"{SG_URI}#0"))]
    denied = sw.send(ip_packet(vm2, vm1, dport=23))  # type: ignore[arg-type]
    assert denied.dropped
    assert [userdata_of(a) for a in denied.logged] == [Decided(DEFAULT_DENY_IN, False, 11)]


def test_the_namer_names_rules_ports_and_endpoints_as_the_intent_does() -> None:
    namer = Namer("h1")
    namer.update(contract_net())
    packet = Packet("tcp", "10.0.0.2", "10.0.0.1", 40000, 80)
    v = namer.verdict(Decided(RULE, True, rule_id(HTTP_URI, "http.web-in")), packet, when=0.0)
    assert v.by == "contract acme/http rule web-in"
    assert (v.verdict, v.src_endpoint, v.dst_endpoint) == ("allowed", APP1.key, WEB1.key)
    assert v.time == "1970-01-01T00:00:00.000Z"
    net, _, _ = sg_net()
    namer.update(net)
    assert (
        namer.verdict(Decided(RULE, True, rule_id(f"{SG_URI}#0")), packet).by
        == "security-group acme/ssh rule 0"
    )
    deny = namer.verdict(Decided(DEFAULT_DENY_IN, False, 11), packet)
    assert (deny.verdict, deny.by) == ("dropped", "default deny (security groups of acme/vm1, ingress)")
    assert deny.text() == (
        "dropped tcp 10.0.0.2:40000 -> 10.0.0.1:80 (acme/vm2 -> acme/vm1) by default deny "
        "(security groups of acme/vm1, ingress)"
    )
    unknown = namer.verdict(Decided(DEFAULT_DENY_IN, False, 11), Packet("icmp", "10.9.9.9", "10.0.0.1", 8, 0))
    assert unknown.text().startswith("dropped icmp 10.9.9.9 -> 10.0.0.1 type 8 code 0 (? -> acme/vm1) by")


def test_the_namer_names_a_rule_added_since_and_remakes_only_what_changed() -> None:
    """``update`` (every reconcile) keeps the view and makes nothing; a line names what decided
    from the view current then: a rule added after the last line is named, and of the namer's maps
    only those whose part of the view changed are made again (a member change: the endpoints',
    never the rules')."""
    namer = Namer("h1")
    first = contract_net()
    namer.update(first)
    assert namer.builds == 0  # nothing made until a line is written
    packet = Packet("tcp", "10.0.0.2", "10.0.0.1", 40000, 8080)
    namer.verdict(Decided(RULE, True, rule_id(HTTP_URI, "http.web-in")), packet)
    assert namer.builds == 3  # rules, ports, addresses
    [http] = first.contracts.values()
    alt = replace(fabric.rule("http.alt", protocol=TCP, ports=8080), log=True)
    added = replace(first, contracts={HTTP_URI: replace(http, rules=(*http.rules, alt))})
    namer.update(added)
    assert namer.builds == 3
    v = namer.verdict(Decided(RULE, True, rule_id(HTTP_URI, "http.alt")), packet)
    assert v.by == "contract acme/http rule alt" and v.dst_endpoint == WEB1.key
    assert namer.builds == 4  # the rules' map alone
    moved = replace(added, local=(WEB1, replace(APP1, classid=APP1.classid + 1)))
    namer.update(moved)
    v = namer.verdict(Decided(RULE, True, rule_id(HTTP_URI, "http.alt")), packet)
    assert v.by == "contract acme/http rule alt" and v.src_endpoint == APP1.key
    assert namer.builds == 6  # the endpoints' two maps, not the rules'
    namer.verdict(Decided(RULE, True, rule_id(HTTP_URI, "http.alt")), packet)
    assert namer.builds == 6  # the same view: nothing made again


def frame(proto: int = 6, v6: bool = False) -> bytes:
    eth = bytes(12) + (b"\x86\xdd" if v6 else b"\x08\x00")
    l4 = struct.pack("!HH", 40000, 80) + bytes(16)
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + bytes(15) + b"\x01" + bytes(15) + b"\x02"
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, b"\n\0\0\1", b"\n\0\0\2")
    return eth + ip + l4


def test_packets_parse_to_five_tuples_and_short_ones_do_not() -> None:
    assert parse_packet(frame()) == Packet("tcp", "10.0.0.1", "10.0.0.2", 40000, 80)
    assert parse_packet(frame(17, v6=True)) == Packet("udp", "::1", "::2", 40000, 80)
    assert parse_packet(frame()[:20]) is None
    assert parse_packet(bytes(12) + b"\x08\x06" + bytes(28)) is None  # ARP


def test_the_controller_action_encodes_as_nxast_controller2() -> None:
    action = log_action(RULE, True, 0x01020304)
    data = w.encode_action(w.parse_action(action))  # type: ignore[arg-type]
    assert len(data) % 8 == 0
    assert struct.unpack_from("!HHIH", data) == (0xFFFF, len(data), w.NX_VENDOR_ID, 37)
    assert bytes.fromhex("010101020304") in data


def test_packet_in2_decodes_userdata_and_packet() -> None:
    def prop(kind: int, value: bytes) -> bytes:
        raw = struct.pack("!HH", kind, 4 + len(value)) + value
        return raw + bytes(-len(raw) % 8)

    body = (
        struct.pack("!II", w.NX_VENDOR_ID, NXT_PACKET_IN2)
        + prop(0, frame())
        + prop(7, bytes.fromhex("010100000007"))
    )
    logged = decode_packet_in2(body)
    assert logged is not None and logged.decided == Decided(RULE, True, 7) and logged.data == frame()
    assert decode_packet_in2(body[:-8]) is None  # cut inside a property
    assert decode_packet_in2(struct.pack("!II", w.NX_VENDOR_ID, NXT_PACKET_IN2) + prop(0, frame())) is None


def test_the_bucket_keeps_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    start = bucket._at
    assert sum(bucket.take(now=start) for _ in range(100)) == 5
    assert sum(bucket.take(now=start + 0.3) for _ in range(100)) == 3  # 10 a second
    assert sum(bucket.take(now=start + 60) for _ in range(100)) == 5  # refilled to the burst only


def test_the_sink_writes_lines_policyfabric_logs_reads(tmp_path: Path) -> None:
    sink = Sink(tmp_path, rate=0.001, burst=3, max_lines=2)
    namer = Namer("h1")
    for _ in range(5):
        sink(namer.verdict(Decided(DEFAULT_DENY_IN, False, 9), Packet("icmp", "10.0.0.1", "10.0.0.2", 8, 0)))
    assert (sink.written, sink.suppressed) == (3, 2)
    lines = read_lines([tmp_path / "rulelog.jsonl"])
    assert len(lines) == 3  # two rotated, one current
    assert lines[0]["by"] == "default deny (security groups of port 9, ingress)"
    assert json.loads((tmp_path / "rulelog.jsonl").read_text())["verdict"] == "dropped"


def test_nftables_logs_before_the_verdict_rate_limited_with_the_rule_in_the_prefix() -> None:
    from policyfabric.agent.renderers.nftables.ruleset import NFLOG_GROUP, group_rules, sg_rules

    web, app = replace(WEB, provides=(HTTP_URI,)), replace(APP, consumes=(HTTP_URI,))
    contract = contract_net(allow=False).contracts[HTTP_URI]
    lines = group_rules(web, [(HTTP_URI, contract)], [app], inbound=True).rules
    at = next(i for i, line in enumerate(lines) if " log prefix " in line)
    assert lines[at].endswith(f'log prefix "pf:1:0:{rule_id(HTTP_URI, "http.web-in")}" group {NFLOG_GROUP}')
    assert "limit rate 100/second burst 200 packets" in lines[at]
    assert lines[at + 1].endswith("tcp dport 80 drop")  # the verdict right after, same match
    outbound = group_rules(app, [(HTTP_URI, contract)], [web], inbound=False).rules
    assert sum(" log " in line for line in outbound) == 2  # a drop: where it drops (IPv4, IPv6)
    allowing = contract_net(allow=True).contracts[HTTP_URI]
    outbound = group_rules(app, [(HTTP_URI, allowing)], [web], inbound=False).rules
    assert not any(" log " in line for line in outbound)  # an allow: once, on the way in
    net, _, _ = sg_net()
    sg = net.security_groups[SG_URI]
    ingress = sg_rules(True, sg.rules, inbound=True).rules
    assert [line.split("log prefix ")[1] for line in ingress if " log " in line] == [
        f'"pf:1:1:{rule_id(f"{SG_URI}#0")}" group {NFLOG_GROUP}',
        f'"pf:2:0:0" group {NFLOG_GROUP}',  # the default deny, before the final drop
    ]
    assert ingress[-1] == "drop"


def test_nflog_messages_parse_to_verdicts() -> None:
    from policyfabric.agent.renderers.nftables import nflog

    def attr(kind: int, value: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(value), kind) + value
        return raw + bytes(-len(raw) % 4)

    ip = frame()[14:]
    body = (
        struct.pack("!BBH", 2, 0, 20556)
        + attr(nflog.NFULA_PREFIX, b"pf:2:0:0\0")
        + attr(nflog.NFULA_PAYLOAD, ip)
    )
    msg = struct.pack("=IHHII", 16 + len(body), nflog.NFNL_SUBSYS_ULOG << 8, 0, 0, 0) + body
    packets, errors = nflog.parse_messages(msg + msg)
    assert errors == [] and [p.decided for p in packets] == [Decided(DEFAULT_DENY_IN, False, 0)] * 2
    assert packets[0].packet == ip
    assert parse_prefix(b"other:1:1:1") is None and parse_prefix(b"pf:1:2:1") is None
    namer = Namer("h1")
    net, _, _ = sg_net()
    namer.update(net)
    from policyfabric.agent.rulelog import parse_ip

    packet = parse_ip(packets[0].packet)
    assert packet is not None
    assert namer.verdict(packets[0].decided, replace(packet, dst="10.0.0.1")).by == (
        "default deny (security groups of acme/vm1, ingress)"
    )


def test_policyfabric_logs_reads_a_labs_hosts_and_filters(tmp_path: Path) -> None:
    import subprocess
    import sys

    namer = Namer("h1")
    namer.update(contract_net())
    for host, verdict in (("h1", True), ("h2", False)):
        sink = Sink(tmp_path / host / "agent")
        (tmp_path / host / "agent").mkdir(parents=True)
        namer.host = host
        sink(namer.verdict(Decided(RULE, verdict, rule_id(HTTP_URI, "http.web-in")), frame_packet()))

    def logs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "policyfabric", "logs", str(tmp_path), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    both = logs().stdout.splitlines()
    assert [line.split()[1:3] for line in both] == [["h1", "allowed"], ["h2", "dropped"]]
    assert both[0].endswith(
        "allowed tcp 10.0.0.1:40000 -> 10.0.0.2:80 (acme/web1 -> acme/app1) by contract acme/http rule web-in"
    )
    dropped = logs("--verdict", "dropped", "--json").stdout.splitlines()
    assert [json.loads(line)["host"] for line in dropped] == ["h2"]
    assert logs("--verdict", "maybe").returncode != 0
    empty = subprocess.run(
        [sys.executable, "-m", "policyfabric", "logs", str(tmp_path / "h1")], capture_output=True, text=True
    )
    assert empty.returncode != 0 and "no rule log" in empty.stderr + empty.stdout


def frame_packet() -> Packet:
    packet = parse_packet(frame())
    assert packet is not None
    return packet


def test_the_flags_travel_from_the_intent_to_the_flows() -> None:
    """tests/scenarios/rulelog.yaml through the authority's OpFlex tree and the agent's reader: the
    logging rules' flows (and only theirs) carry the copy, with the id the namer will name."""
    from tests.scenario_flows import ROOT, scenario_flows

    [flows] = scenario_flows(ROOT / "tests" / "scenarios" / "rulelog.yaml").values()
    userdata = sorted(
        (d.kind, d.allowed)
        for f in flows
        for a in f.actions
        if a.startswith("controller(") and (d := userdata_of(a)) is not None
    )
    # web-in (allowed), telnet (dropped) x IPv4 and IPv6 classifiers share one flow each; the ssh
    # group's rule; its default deny on vm1's and vm2's ports; the quiet rule: nothing
    assert userdata == [
        (RULE, False),
        (RULE, True),
        (RULE, True),
        (DEFAULT_DENY_IN, False),
        (DEFAULT_DENY_IN, False),
    ]


def test_a_prefix_of_an_unknown_kind_is_not_ours() -> None:
    """Only the kinds the renderers write are read back: kind 9 is neither a rule nor a default
    deny, and must not be named as one."""
    assert parse_prefix(prefix(DEFAULT_DENY_IN, False, 0).encode()) == Decided(DEFAULT_DENY_IN, False, 0)
    assert parse_prefix(b"pf:9:0:0") is None and parse_prefix(b"pf:0:1:5") is None


class _Scripted:
    """A socket whose reads are given: each item is data, or an OSError raised."""

    def __init__(self, reader: object, *reads: bytes | OSError) -> None:
        self.reader, self.reads = reader, list(reads)

    def recv(self, size: int) -> bytes:
        if not self.reads:
            self.reader._stop.set()  # type: ignore[attr-defined]
            raise TimeoutError
        item = self.reads.pop(0)
        if isinstance(item, OSError):
            raise item
        return item


def nflog_message(prefix_text: bytes, payload: bytes) -> bytes:
    from policyfabric.agent.renderers.nftables import nflog

    def attr(kind: int, value: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(value), kind) + value
        return raw + bytes(-len(raw) % 4)

    body = (
        struct.pack("!BBH", 2, 0, 20556)
        + attr(nflog.NFULA_PREFIX, prefix_text)
        + attr(nflog.NFULA_PAYLOAD, payload)
    )
    return struct.pack("=IHHII", 16 + len(body), nflog.NFNL_SUBSYS_ULOG << 8, 0, 0, 0) + body


def test_the_nflog_reader_goes_on_after_a_buffer_overrun() -> None:
    """ENOBUFS (the socket's buffer overran: messages lost) is counted, and the next message is
    still read; another error ends this socket (the reader then makes a new one)."""
    import errno

    import pytest

    from policyfabric.agent.renderers.nftables.nflog import NflogReader

    got: list[tuple[Decided, bytes]] = []
    reader = NflogReader(None, lambda d, p: got.append((d, p)))
    ip = frame()[14:]
    reader._read(_Scripted(reader, OSError(errno.ENOBUFS, "full"), nflog_message(b"pf:2:0:0\0", ip)))  # type: ignore[arg-type]
    assert reader.lost == 1 and got == [(Decided(DEFAULT_DENY_IN, False, 0), ip)]
    reader._stop.clear()
    with pytest.raises(OSError):
        reader._read(_Scripted(reader, OSError(errno.EBADF, "gone")))  # type: ignore[arg-type]


def test_an_nftables_renderer_writes_through_the_agents_one_rule_log(tmp_path: Path) -> None:
    """The agent's rule log is the only writer of its file: the nftables renderer is handed its
    ``write_ip`` and keeps no sink of its own, so the Open vSwitch copies and the netfilter log's
    count toward one rotation."""
    from policyfabric.agent.renderers.api import RendererContext
    from policyfabric.agent.renderers.nftables.renderer import NftablesRenderer
    from policyfabric.agent.rulelog import RuleLog

    rulelog = RuleLog(None, "h1", tmp_path)
    rulelog.sink = Sink(tmp_path, max_lines=2)
    net, _, _ = sg_net()
    rulelog.namer.update(net)
    renderer = NftablesRenderer(RendererContext("h1", tmp_path, rule_log=rulelog.write_ip))
    assert not any(isinstance(v, Sink) for v in vars(renderer).values())
    assert renderer.nflog is not None
    for _ in range(3):
        renderer.nflog.sink(Decided(DEFAULT_DENY_IN, False, 0), frame()[14:])
    assert rulelog.sink.written == 3
    assert len(read_lines([tmp_path / "rulelog.jsonl"])) == 3  # two rotated, one new
    assert len((tmp_path / "rulelog.jsonl").read_text().splitlines()) == 1


def test_both_renderers_log_a_default_deny_in_the_directions_the_groups_log() -> None:
    """A group logging only an egress rule logs its ports' egress default deny, not the ingress
    one, on Open vSwitch as in the nftables ruleset."""
    from policyfabric.agent.renderers.nftables.ruleset import sg_rules
    from policyfabric.agent.renderers.ovs import secgroups

    out = security_group(SG_URI, replace(sg_rule(f"{SG_URI}#0", "out", protocol=TCP, ports=22), log=True))
    sgs = [(out, ())]
    assert secgroups.logs(sgs, "out") and not secgroups.logs(sgs, "in")
    ingress_deny = secgroups.port_flow(11, log=secgroups.logs(sgs))
    assert ingress_deny.actions == ("drop",)
    [egress_deny] = [f for f in secgroups.port_flows(11, sgs) if f.priority == 10]
    assert userdata_of(egress_deny.actions[0]) == Decided(DEFAULT_DENY_OUT, False, 11)
    assert not any("pf:2:" in line for line in sg_rules(True, [], inbound=True).rules)
    assert any("pf:3:0:0" in line for line in sg_rules(True, out.rules, inbound=False).rules)


def test_policyfabric_logs_prints_ipv6_addresses_as_written(tmp_path: Path) -> None:
    """``[fe80::1]:40000`` is text, not console markup: the brackets and addresses stay."""
    import subprocess
    import sys

    sink = Sink(tmp_path)
    packet = Packet("tcp", "fe80::1", "fd00::2", 40000, 80)
    sink(Namer("h1").verdict(Decided(RULE, True, 7), packet))
    shown = subprocess.run(
        [sys.executable, "-m", "policyfabric", "logs", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "allowed tcp [fe80::1]:40000 -> [fd00::2]:80 (? -> ?)" in shown.stdout, shown.stdout + shown.stderr

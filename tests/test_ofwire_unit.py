"""The OpenFlow 1.5 encoder (``ofwire``) and channel (``ofchannel``) without Open vSwitch running.

Every flow the compiler emits for the scenarios and the table map's rich fabrics must encode; what
it encodes must read back (``ovs-ofctl ofp-print``, OVS's own decoder, when installed) as the flow's
own text; malformed flows are refused naming the flow. The channel is driven against a fake switch
on a socket pair: the bundle protocol, the echo answer, OVS's errors decoded and mapped back to the
flow, the reconnect after an idle close, and the applier's fallback to ``ovs-ofctl``. That the bytes
are what OVS installs is the dataplane test's job (test_ofchannel_dataplane.py).
"""

from __future__ import annotations

import logging
import re
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.agent.renderers.ovs.applier import FlowApplier, bundled
from policyfabric.agent.renderers.ovs.flowmods import AddFlow, DeleteFlow, Mirror
from policyfabric.agent.renderers.ovs.flows import Flow, flow
from policyfabric.agent.renderers.ovs.ofchannel import (
    BundleFailed,
    ChannelLost,
    ChannelUnavailable,
    OfChannel,
    mgmt_socket,
)
from tests.scenario_flows import every_scenario
from tests.test_table_map import PIPELINES

SETS = {**every_scenario(), **{f"table map: {n}": fs for n, fs in PIPELINES}}
EVERY_FLOW = sorted({f for fs in SETS.values() for f in fs})


def test_every_flow_the_compiler_emits_encodes() -> None:
    assert len(EVERY_FLOW) > 500
    for f in EVERY_FLOW:
        body = w.add_body(f)
        assert len(body) % 8 == 0, f.text()
        assert len(w.delete_strict_body(f)) % 8 == 0


def _shape(f: Flow) -> tuple[Any, ...]:
    actions = tuple(re.sub(r"[0-9a-f:.]*\d[0-9a-f:.]*", "N", a) for a in f.actions)
    return (f.table, tuple(k for k, _ in f.match), actions)


@pytest.mark.skipif(shutil.which("ovs-ofctl") is None, reason="needs ovs-ofctl (its ofp-print decoder)")
def test_what_is_encoded_reads_back_as_the_flow_in_ovs_own_decoder() -> None:
    """One flow of each shape (table, match fields, action forms) through ``ovs-ofctl ofp-print``:
    every match field and action comes back as the compiler wrote it (up to OVS's spelling)."""
    shapes: dict[tuple[Any, ...], Flow] = {}
    for f in EVERY_FLOW:
        shapes.setdefault(_shape(f), f)
    for f in shapes.values():
        hexed = w.message(w.OFPT_FLOW_MOD, 1, w.add_body(f)).hex()
        out = subprocess.run(
            ["ovs-ofctl", "ofp-print", hexed], capture_output=True, text=True, check=True
        ).stdout
        assert "ADD" in out and f"cookie:{f.cookie:#x}" in out, (f.text(), out)
        printed = out.split(" actions=", 1)[1].strip()
        assert _normal(printed) == _normal(",".join(f.actions) or "drop"), (f.text(), out)


def _normal(actions: str) -> str:
    """Spellings OVS prints differently from the compiler: hex vs decimal set_field values, the
    order of ct's arguments, learn's immediate match, and output:N as a plain port."""
    out = re.sub(
        r"set_field:(0x[0-9a-f]+|\d+)(/0x[0-9a-f]+)?->", lambda m: f"set_field:{int(m[1], 0)}->", actions
    )
    out = re.sub(
        r"ct\(([^()]*(\([^()]*\))?[^()]*)\)", lambda m: "ct(" + ",".join(sorted(m[1].split(","))) + ")", out
    )
    out = re.sub(
        r"learn\(table=(\d+),idle_timeout=(\d+),priority=(\d+)",
        r"learn(table=\1,priority=\3,idle_timeout=\2",
        out,
    )
    out = re.sub(r"NXM_NX_REG4\[\]=(\d+)", lambda m: f"reg4={int(m[1]):#x}", out)
    return out


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (flow(0, 1, {"tp_dst": 80}, "drop"), "tp_dst needs tcp or udp"),
        (flow(0, 1, {"nw_src": "10.0.0.1"}, "drop"), "nw_src needs ip or arp"),
        (flow(0, 1, {"ip": "", "nw_src": "10.0.0.300"}, "drop"), "10.0.0.300"),
        (flow(0, 1, {"reg0": "0x1ffffffff"}, "drop"), "does not fit reg0"),
        (flow(0, 1, {"dl_dst": "02:00:00:00:00"}, "drop"), "not a MAC"),
        (flow(0, 1, {"ct_state": "+new+bogus"}, "drop"), "ct_state flag"),
        (flow(0, 1, {"vlan_tci": "0x1000/0x1000"}, "drop"), "unknown field 'vlan_tci'"),
        (flow(0, 1, None, "set_field:1->reg0", "goto_table:10", "drop"), "drop with other actions"),
        (flow(30, 1, None, "goto_table:10"), "does not go forward"),
        (flow(0, 1, None, "goto_table:10", "output:1"), "goto_table must be the last"),
        (flow(0, 1, None, "output:0"), "not a port number"),
        (flow(0, 1, None, "conjunction(7,1/2)", "output:1"), "conjunction with other actions"),
        (flow(0, 1, None, "conjunction(7,3/2)"), "out of range"),
        (flow(0, 1, None, "move:NXM_NX_REG0[0..15]->NXM_NX_REG1[0..7]"), "move of 16 bits into 8"),
        (flow(0, 1, None, "ct(commit,zone=70000)"), "not 16 bits"),
        (flow(0, 1, None, "ct(commit,exec(set_field:1->ct_mark))"), "ct option"),
        (flow(0, 1, None, "mod_vlan_vid:5"), "unknown action"),
        (flow(0, 1, None, "learn(table=5,bogus)"), "learn option"),
    ],
)
def test_a_malformed_flow_is_refused_naming_it(bad: Flow, why: str) -> None:
    with pytest.raises(w.OfWireError) as err:
        w.add_body(bad)
    assert bad.text() in str(err.value) and why in str(err.value), str(err.value)


def test_the_management_socket_is_found_as_ovs_ofctl_finds_it() -> None:
    assert mgmt_socket("unix:/run/x/br-int.mgmt") == Path("/run/x/br-int.mgmt")
    assert mgmt_socket("br-int", {"OVS_RUNDIR": "/run/y"}) == Path("/run/y/br-int.mgmt")
    assert mgmt_socket("br-int", {}) == Path("/var/run/openvswitch/br-int.mgmt")
    assert mgmt_socket("tcp:127.0.0.1:6653") is None


# --- the channel against a fake switch --------------------------------------------------------------


class FakeOvs:
    """The switch's end of a Unix socket: speaks just enough OpenFlow 1.5 (hello, bundles, barrier,
    echo) and can be told to refuse one flow (by its priority) or to send an echo request first."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.refuse_priority: int | None = None
        self.hello_version = w.VERSION
        self.echo_first = False
        self.die_in_bundle = False
        self.echo_replies: list[bytes] = []
        self.committed: list[list[bytes]] = []
        self.connections = 0
        self.conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.conn = conn
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        bundles: dict[int, list[bytes]] = {}
        failed: set[int] = set()

        def send(msg_type: int, xid: int, body: bytes = b"") -> None:
            conn.sendall(struct.pack("!BBHI", self.hello_version, msg_type, 8 + len(body), xid) + body)

        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= 8 and len(buf) >= struct.unpack_from("!H", buf, 2)[0]:
                    _, t, length, xid = struct.unpack_from("!BBHI", buf)
                    body, buf = buf[8:length], buf[length:]
                    if t == w.OFPT_HELLO:
                        send(w.OFPT_HELLO, xid)
                        if self.echo_first:
                            send(w.OFPT_ECHO_REQUEST, 0xE0, b"ping")
                    elif t == w.OFPT_ECHO_REPLY:
                        self.echo_replies.append(body)
                    elif t == w.OFPT_BUNDLE_CONTROL and self.die_in_bundle:
                        conn.close()
                        return
                    elif t == w.OFPT_BUNDLE_CONTROL:
                        bid, kind, flags = struct.unpack_from("!IHH", body)
                        if kind == w.OFPBCT_OPEN_REQUEST:
                            bundles[bid] = []
                        elif kind == w.OFPBCT_COMMIT_REQUEST:
                            self.committed.append(bundles.pop(bid))
                        else:
                            bundles.pop(bid)
                        send(w.OFPT_BUNDLE_CONTROL, xid, struct.pack("!IHH", bid, kind + 1, flags))
                    elif t == w.OFPT_BUNDLE_ADD_MESSAGE:
                        (bid,) = struct.unpack_from("!I", body)
                        inner = body[8:]
                        (priority,) = struct.unpack_from(
                            "!H", inner, 30
                        )  # after header, cookies, table, command, timeouts
                        if priority == self.refuse_priority:
                            failed.add(bid)  # OFPET_BAD_ACTION / BAD_OUT_PORT, with the add's xid
                            send(w.OFPT_ERROR, xid, struct.pack("!HH", 2, 4) + inner[:64])
                        else:
                            bundles[bid].append(inner)
                    elif t == w.OFPT_BARRIER_REQUEST:
                        send(w.OFPT_BARRIER_REPLY, xid)
        except OSError:
            return

    def drop(self) -> None:
        """Close the current connection, as OVS does with one that ignored its echo requests."""
        assert self.conn is not None
        self.conn.shutdown(socket.SHUT_RDWR)
        self.conn.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def fake_ovs(tmp_path: Path) -> Iterator[tuple[FakeOvs, Path]]:
    path = tmp_path / "br.mgmt"
    ovs = FakeOvs(path)
    yield ovs, path
    ovs.close()


A = flow(10, 5, {"reg1": 1}, "drop")
B = flow(10, 6, {"reg1": 2}, "output:3")
C = flow(10, 7, {"reg1": 3}, "output:4")


def test_a_delta_is_one_bundle_of_flow_mods(fake_ovs: tuple[FakeOvs, Path]) -> None:
    ovs, path = fake_ovs
    applier = FlowApplier(f"unix:{path}", channel=True)
    applier.mirror = Mirror()  # as after a full sync of nothing
    applier.execute([DeleteFlow(C), AddFlow(A), AddFlow(B)])
    [bundle] = ovs.committed
    assert [m[8 + 17] for m in bundle] == [w.OFPFC_DELETE_STRICT, w.OFPFC_ADD, w.OFPFC_ADD]
    assert bundle[1][8:] == w.add_body(A) and bundle[0][8:] == w.delete_strict_body(C)
    applier.execute([AddFlow(C)])
    assert len(ovs.committed) == 2 and ovs.connections == 1  # the same connection


def test_an_echo_request_is_answered(fake_ovs: tuple[FakeOvs, Path]) -> None:
    ovs, path = fake_ovs
    ovs.echo_first = True
    channel = OfChannel(path)
    channel.connect()
    channel.send(bundled([AddFlow(A)]))
    assert ovs.echo_replies == [b"ping"] and channel.echoes_answered == 1


def test_a_refused_flow_fails_the_whole_bundle_naming_it(fake_ovs: tuple[FakeOvs, Path]) -> None:
    ovs, path = fake_ovs
    ovs.refuse_priority = B.priority
    channel = OfChannel(path)
    with pytest.raises(BundleFailed) as err:
        channel.send(bundled([AddFlow(A), AddFlow(B), AddFlow(C)]))
    assert "OFPET_BAD_ACTION/BAD_OUT_PORT" in str(err.value) and B.text() in str(err.value)
    assert ovs.committed == []  # discarded, not committed without the bad one
    assert not channel.connected


def test_after_a_refused_bundle_the_applier_syncs_in_full(fake_ovs: tuple[FakeOvs, Path]) -> None:
    ovs, path = fake_ovs
    calls: list[str] = []

    def run(argv: Sequence[str], **_: Any) -> str:
        calls.append(argv[5] if argv[4] == "--bundle" else argv[4])
        return ""

    applier = FlowApplier(f"unix:{path}", run=run, channel=OfChannel(path))
    applier.sync([A])
    assert calls[-1] == "replace-flows"  # the first sync is a full one, through ovs-ofctl
    ovs.refuse_priority = B.priority
    with pytest.raises(BundleFailed):
        applier.sync([A, B])
    assert applier.installed is None and ovs.committed == []
    applier.sync([A, B])
    assert calls[-1] == "replace-flows"


def test_a_connection_closed_while_idle_is_reopened_and_nothing_is_lost(
    fake_ovs: tuple[FakeOvs, Path],
) -> None:
    ovs, path = fake_ovs
    channel = OfChannel(path)
    channel.send(bundled([AddFlow(A)]))
    ovs.drop()
    _wait(lambda: not _peer_alive(channel))
    channel.send(bundled([AddFlow(B)]))
    assert ovs.connections == 2 and len(ovs.committed) == 2


def _peer_alive(channel: OfChannel) -> bool:
    sock = channel._sock
    assert sock is not None
    return not select.select([sock], [], [], 0)[0]


def _wait(cond: Callable[[], bool]) -> None:
    for _ in range(200):
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_a_bundle_the_connection_dies_in_leaves_the_state_unknown(fake_ovs: tuple[FakeOvs, Path]) -> None:
    ovs, path = fake_ovs
    applier = FlowApplier(f"unix:{path}", run=lambda *a, **k: "", channel=OfChannel(path))
    applier.sync([A])
    ovs.die_in_bundle = True
    with pytest.raises(ChannelLost):
        applier.sync([A, B])
    assert applier.installed is None and not applier.channel.connected  # type: ignore[union-attr]


def test_without_a_channel_deltas_go_through_ovs_ofctl_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def run(argv: Sequence[str], **_: Any) -> str:
        calls.append(argv[5] if argv[4] == "--bundle" else argv[4])
        return ""

    applier = FlowApplier(f"unix:{tmp_path}/absent.mgmt", run=run, channel=True)
    with caplog.at_level(logging.WARNING):
        applier.sync([A])
        applier.sync([A, B])
        applier.sync([A, B, C])
    assert calls == ["dump-tlv-map", "add-tlv-map", "replace-flows", "bundle", "bundle"]
    warnings = [r.getMessage() for r in caplog.records if "go through ovs-ofctl" in r.getMessage()]
    assert len(warnings) == 1 and "absent.mgmt" in warnings[0], warnings


def test_a_switch_without_openflow_15_is_no_channel(fake_ovs: tuple[FakeOvs, Path]) -> None:
    ovs, path = fake_ovs
    ovs.hello_version = 4  # OpenFlow 1.3 only
    with pytest.raises(ChannelUnavailable, match=r"OpenFlow 1\.5"):
        OfChannel(path).connect()


def test_a_large_delta_goes_through_ovs_ofctl(fake_ovs: tuple[FakeOvs, Path]) -> None:
    ovs, path = fake_ovs
    calls: list[str] = []

    def run(argv: Sequence[str], **_: Any) -> str:
        calls.append(argv[4])
        return ""

    applier = FlowApplier(f"unix:{path}", run=run, channel=True, channel_max=2)
    applier.execute([AddFlow(A), AddFlow(B)])
    applier.execute([AddFlow(A), AddFlow(B), AddFlow(C)])
    assert len(ovs.committed) == 1 and calls == ["bundle"]


def test_injected_run_means_no_channel_unless_asked() -> None:
    assert FlowApplier("unix:/x.mgmt", run=lambda *a, **k: "").channel is None
    assert FlowApplier("unix:/x.mgmt").channel is not None
    assert FlowApplier("unix:/x.mgmt", channel=False).channel is None

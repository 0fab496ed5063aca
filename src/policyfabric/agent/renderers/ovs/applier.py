"""Putting compiled flows on the bridge: plan against a mirror, then one bundle.

What to change is decided by the planner (``flowmods.Mirror``: the desired flows come in
sections, ``sections.py``, and only the sections that changed are compared); this module only
executes its commands and keeps the mirror. The first sync after start is ``ovs-ofctl --bundle
replace-flows``: OVS compares every flow itself and changes only those that differ, in one
bundle, so a restarted agent with unchanged policy touches nothing and no connection notices
(measured: it also beats sending every flow over our own connection, bench/ofchannel.py).
After that the agent sends only the difference (``OFPFC_ADD`` / ``OFPFC_DELETE_STRICT``) as one
bundle, all of a change or none of it, over a persistent OpenFlow 1.5 connection to the bridge
(``ofchannel.py``, encoded by ``ofwire.py``): ~0.2 ms instead of a ~5-8 ms ``ovs-ofctl`` process.
When that connection cannot be had (no management socket, no OpenFlow 1.5) the same bundle goes
through ``ovs-ofctl bundle`` (logged once, with the reason). When a bundle fails or the
connection breaks during one, what the bridge holds is unknown, so the mirror is dropped and the
next sync is a full one. The same happens when someone else changes the bridge (drift): ``watch``
puts a flow monitor on it (``monitor.py``) that tells apart the agent's own changes, which every
sync brackets, from anyone else's.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from policyfabric.agent.renderers.api import Applied, DriftLatch
from policyfabric.agent.renderers.ovs.flowmods import (
    AddFlow,
    Command,
    DeleteFlow,
    FlowKey,
    Mirror,
    ReplaceFlows,
)
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.monitor import FlowMonitor
from policyfabric.agent.renderers.ovs.ofchannel import Bundled, ChannelUnavailable, OfChannel, mgmt_socket
from policyfabric.agent.renderers.ovs.ofwire import OFPT_FLOW_MOD, add_body, delete_strict_body
from policyfabric.agent.renderers.ovs.sections import SectionKey, Sections
from policyfabric.sh import run

log = logging.getLogger(__name__)
_default_run = run

TLV_MAP = "{class=0x5046,type=0x01,len=4}->tun_metadata0"

# Flows name ports by number. Without --no-names, ovs-ofctl fetches every port's
# description before each command so that it could parse names: 136 ms instead
# of 41 ms per two-flow bundle on a bridge with 2,000 ports.
OFCTL = ("ovs-ofctl", "-O", "OpenFlow15", "--no-names")

# A delta of more flow mods than this goes through ovs-ofctl: encoding in Python costs ~12-50 µs a
# flow the first time it is seen (memoised after), ovs-ofctl's C parser ~10 µs, so past a few hundred
# new flows the process start (~5 ms) is the cheaper price (bench/converge.py: a burst of new
# endpoints rendered 2-4x slower without this limit).
CHANNEL_MAX = 200

REPLACE_CHUNK = 4096  # flows written to a replace-flows file at a time

Runner = Callable[..., str]  # policyfabric.sh.run's shape: run(argv, *, env=...) -> stdout


def whole_is_cheaper(changes: int, flows: int, channel_max: int = CHANNEL_MAX) -> bool:
    """Whether ``changes`` flow mods to a bridge of ``flows`` go better as one ``replace-flows`` of
    the whole table than as a delta: past the channel's size, where both are ``ovs-ofctl``, when
    they are half the table or more. Measured (bench/converge.py, first install growing from a few
    endpoints' flows): a 9,027-flow delta bundle took 502 ms, the 9,060-flow ``replace-flows`` 188
    ms; at 10,000 endpoints 30,392 flow mods 1.9 s, all 90,060 flows 2.4 s (63 against 27 µs a
    flow). A full sync also keeps a burst that large from pausing the flow monitor as someone
    else's change would (``monitor.py``)."""
    return changes > channel_max and 2 * changes >= flows


def ofctl_deadline(flows: int) -> float:
    """Seconds an ``ovs-ofctl`` call with ``flows`` flows may take: a minute, plus 5 ms a flow."""
    return 60.0 + 0.005 * flows


def bundle_line(command: AddFlow | DeleteFlow) -> str:
    """One line of an ``ovs-ofctl bundle`` file."""
    if isinstance(command, AddFlow):
        return f"flow add {command.flow.text()}"
    return f"flow delete_strict {command.flow.match_text()}"


def ofctl_calls(target: str, commands: Sequence[Command]) -> list[tuple[tuple[str, ...], str]]:
    """The ``ovs-ofctl`` calls (arguments before the file, the file's text) that run ``commands``:
    a ``ReplaceFlows`` alone, or every add and delete as one bundle."""
    if not commands:
        return []
    if isinstance(commands[0], ReplaceFlows):
        if len(commands) > 1:
            raise ValueError("replace-flows is a bundle of its own: nothing may go with it")
        text = "".join(f.text() + "\n" for f in commands[0].flows)
        return [(("--bundle", "replace-flows", target), text)]
    lines = []
    for c in commands:
        if isinstance(c, ReplaceFlows):
            raise ValueError("replace-flows is a bundle of its own: nothing may go with it")
        lines.append(bundle_line(c))
    return [(("bundle", target), "\n".join(lines) + "\n")]


class _Said:
    """A command as ``ovs-ofctl bundle`` would say it, rendered only when an error names it."""

    __slots__ = ("command",)

    def __init__(self, command: AddFlow | DeleteFlow) -> None:
        self.command = command

    def __str__(self) -> str:
        return bundle_line(self.command)


def bundled(commands: Sequence[AddFlow | DeleteFlow]) -> list[Bundled]:
    """The flow mods of ``commands`` for the channel, encoded before anything is sent (a flow the
    encoder cannot express raises ``OfWireError`` naming it, and the bridge is untouched)."""
    return [
        Bundled(
            OFPT_FLOW_MOD,
            add_body(c.flow) if isinstance(c, AddFlow) else delete_strict_body(c.flow),
            _Said(c),
        )
        for c in commands
    ]


def applied(commands: Sequence[Command], seconds: float) -> Applied:
    """What ``commands`` changed, as the agent logs it."""
    if commands and isinstance(commands[0], ReplaceFlows):
        return Applied(len(commands[0].flows), 0, seconds, full=True)
    added = sum(isinstance(c, AddFlow) for c in commands)
    return Applied(added, sum(isinstance(c, DeleteFlow) for c in commands), seconds)


class FlowApplier:
    """One bridge: a mirror of what the agent installed, and the executor of planned commands.

    ``run`` is how ``ovs-ofctl`` reaches the machine (``policyfabric.sh.run``'s signature); tests
    pass their own. ``channel`` carries the deltas: by default an ``OfChannel`` to the target's
    management socket when ``run`` is the real one (a test that injects ``run`` sees every command
    as an ``ovs-ofctl`` call, as before); False for none; or a channel of the caller's. Deltas of
    more than ``channel_max`` flow mods go through ``ovs-ofctl`` (``CHANNEL_MAX``).
    """

    def __init__(
        self,
        target: str,
        env: Mapping[str, str] | None = None,
        *,
        run: Runner = run,
        channel: OfChannel | bool | None = None,
        channel_max: int = CHANNEL_MAX,
    ) -> None:
        self.target, self.env = target, dict(env) if env is not None else None
        self.mirror: Mirror | None = None  # None: what the bridge holds is unknown (full sync next)
        self._run = run
        self.channel: OfChannel | None = None
        if isinstance(channel, OfChannel):
            self.channel = channel
        elif channel or (channel is None and run is _default_run):
            path = mgmt_socket(target, self.env)
            self.channel = OfChannel(path) if path is not None else None
        self.channel_max = channel_max  # larger deltas go through ovs-ofctl (see CHANNEL_MAX)
        self.channel_down: str | None = None  # why the last delta went through ovs-ofctl instead
        self.monitor: FlowMonitor | None = None
        self._drifted = DriftLatch()  # someone else changed the bridge: the next sync is full
        self.last_split = (0.0, 0.0)  # the last sync's seconds: planning, then sending (the log says)

    def watch(self, on_drift: Callable[[str], None]) -> bool:
        """Watch the bridge for changes made by others (a flow monitor on the management socket):
        on one, the next sync is a full one and ``on_drift(what)`` is called (from the monitor's
        thread). False if the target has no management socket to watch."""
        path = mgmt_socket(self.target, self.env)
        if path is None or self.monitor is not None:
            return self.monitor is not None

        self.monitor = FlowMonitor(path, self._drifted.wrap(on_drift))
        self.monitor.start()
        return True

    def unwatch(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    def _ofctl(self, *args: str, text: str) -> None:
        """One ``ovs-ofctl`` call with its flows in a file. Its deadline grows with the flows: on a
        userspace bridge ovs-vswitchd's cost per flow grows with the bridge's ports (measured here:
        45,000 flows take 0.3 s with no port, 15 s with 5,000 ports), so 90,000 flows on a bridge
        of 10,000 ports take over a minute, and a fixed deadline would fail every full sync and
        start it again, for ever."""
        with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as f:
            f.write(text)
        try:
            self._run([*OFCTL, *args, f.name], env=self.env, timeout=ofctl_deadline(text.count("\n")))
        finally:
            os.unlink(f.name)

    def ensure_tlv_map(self) -> None:
        """Map the Geneve option that carries the source group to ``tun_metadata0`` (once per bridge)."""
        have = self._run([*OFCTL, "dump-tlv-map", self.target], env=self.env)
        if any(line.split() == ["0x5046", "0x1", "4", "tun_metadata0"] for line in have.splitlines()):
            return
        self._run([*OFCTL, "add-tlv-map", self.target, TLV_MAP], env=self.env)

    def packet_out(self, spec: str) -> None:
        """Send one packet from the switch (``in_port=... packet=HEX actions=...``)."""
        self._run([*OFCTL, "packet-out", self.target, spec], env=self.env)

    def execute(self, commands: Sequence[Command]) -> None:
        """Run ``commands`` on the bridge as one bundle (the channel's, else one ``ovs-ofctl``
        call); raise if it fails."""
        deltas = [c for c in commands if not isinstance(c, ReplaceFlows)]
        # (a ReplaceFlows, alone or mixed in, goes to ofctl_calls, which refuses a mixed list)
        if (
            deltas
            and len(deltas) == len(commands)
            and self.channel is not None
            and len(deltas) <= self.channel_max
        ):
            messages = bundled(deltas)
            try:
                self.channel.send(messages)
            except ChannelUnavailable as exc:
                if self.channel_down != str(exc):
                    log.warning("flows to %s go through ovs-ofctl: %s", self.target, exc)
                self.channel_down = str(exc)
            else:
                if self.channel_down is not None:
                    log.info("flows to %s go through the OpenFlow channel again", self.target)
                self.channel_down = None
                return
        if len(commands) == 1 and isinstance(commands[0], ReplaceFlows):
            self._replace_flows(commands[0].flows)
            return
        for args, text in ofctl_calls(self.target, commands):
            self._ofctl(*args, text=text)

    def _replace_flows(self, flows: Sequence[Flow]) -> None:
        """``ovs-ofctl --bundle replace-flows`` of ``flows``, their file written a few thousand
        lines at a time (what ``ofctl_calls`` says, without the whole text in memory at once: at
        110,000 flows that was 16 MB of text and 110,000 line strings alive together, whose arenas
        the agent's resident memory kept after)."""
        with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as f:
            for at in range(0, len(flows), REPLACE_CHUNK):
                f.write("".join([fl.text() + "\n" for fl in flows[at : at + REPLACE_CHUNK]]))
        try:
            argv = [*OFCTL, "--bundle", "replace-flows", self.target, f.name]
            self._run(argv, env=self.env, timeout=ofctl_deadline(len(flows)))
        finally:
            os.unlink(f.name)

    @property
    def installed(self) -> dict[FlowKey, Flow] | None:
        """The flows the bridge holds, by key, as far as the agent knows (None: unknown)."""
        return self.mirror.flows if self.mirror is not None else None

    def forget(self) -> None:
        """Forget what the bridge holds: the next sync is a full one."""
        self.mirror = None

    def section_of(self, cookie: int) -> list[SectionKey]:
        """The section(s) of what the agent installed whose flows carry ``cookie`` (a dumped flow's
        cookie → the object it came from); [] if none (or nothing is known)."""
        return self.mirror.section_of(cookie) if self.mirror is not None else []

    def _mostly_new(self, mirror: Mirror, desired: Sections) -> bool:
        """Whether ``desired`` brings sections the mirror lacks with at least as many flows as the
        bridge holds now (and more than the channel takes): the delta would be half the table or
        more (``whole_is_cheaper``), so it goes whole without diffing it first. Costs the changed
        sections, not their flows. Seen at 10,000 endpoints: 2.4 s of planning a first install of
        120,065 flows against the 38 base flows, every flow given to the mirror, then each looked
        up again, then thrown away for ``replace-flows``."""
        keys = desired.changed_since(mirror.applied) if mirror.applied is not None else None
        if keys is None:  # no common root: every section (as ``Mirror.update`` compares them)
            keys = desired.parts.keys()
        new = sum(len(desired.get(k)) for k in keys if k not in mirror.sections)
        return new > self.channel_max and new >= len(mirror.flows)

    def sync(self, flows: Sections | Iterable[Flow]) -> Applied:
        """Make the bridge hold exactly ``flows``: sections as the compiler makes them (only those
        that changed since the last sync are compared), or a plain list of flows."""
        start = time.monotonic()
        if self._drifted.take():  # someone else changed the bridge: restore it in full
            self.mirror = None
        desired = flows if isinstance(flows, Sections) else Sections.of(flows)
        mirror = self.mirror
        self.mirror = None  # until the commands are through, what the bridge holds is unknown
        commands: list[Command]
        if mirror is None:
            mirror = Mirror.of(desired)
            commands = [ReplaceFlows(tuple(mirror.flows.values()))]
            self.ensure_tlv_map()
        elif self._mostly_new(mirror, desired):
            mirror = Mirror.of(desired)  # no diff worked out only to be thrown away
            commands = [ReplaceFlows(tuple(mirror.flows.values()))]
        else:
            commands = mirror.update(desired)
            if whole_is_cheaper(len(commands), len(mirror.flows), self.channel_max):
                commands = [ReplaceFlows(tuple(mirror.flows.values()))]
        planned = time.monotonic()
        token = self.monitor.own(commands) if self.monitor is not None and commands else None
        try:
            self.execute(commands)
        finally:
            if token is not None:
                assert self.monitor is not None
                self.monitor.settle(token)
        self.mirror = mirror
        done = time.monotonic()
        self.last_split = (planned - start, done - planned)
        return applied(commands, done - start)

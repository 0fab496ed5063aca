"""The renderer plug-in API: how a third party adds a device to the agent.

A renderer turns the agent's view of the network (``policyfabric.agent.view.Network``:
typed, frozen records of the local and remote endpoints, groups, contracts,
bridge domains, security groups and their address sets) into a device's own
configuration, in two steps the agent calls on every change:

- ``compile(net)``: pure, no I/O; returns the desired device state;
- ``apply(desired)``: makes the device hold it, atomically where the device
  allows, and says what changed. It is called only when the desired state
  differs from the one last applied.

Plug-ins are Python entry points in the group ``policyfabric.renderers``::

    # the plug-in's pyproject.toml
    [project.entry-points."policyfabric.renderers"]
    myfirewall = "my_package.renderer:MyFirewallRenderer"

and run with ``policyfabric agent --renderer myfirewall:key=value``.
The Open vSwitch renderer (``ovs.renderer.OvsRenderer``) is built into the
agent and always runs first, through the same two steps; the agent's OVSDB
side discovers the endpoints it forwards for. Plug-in renderers run after it
on the same view. ``policyfabric renderers`` lists what is installed.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from policyfabric.agent.renderers.logcodes import LogSink
from policyfabric.agent.view import Network

GROUP = "policyfabric.renderers"
Desired = TypeVar("Desired")


@dataclass(frozen=True)
class RendererContext:
    """What a renderer is told about where it runs."""

    host: str
    state_dir: Path | None = None
    options: Mapping[str, str] = field(default_factory=dict)  # --renderer NAME:KEY=VALUE,...
    rule_log: LogSink | None = None  # where logged verdicts go (the agent's rule log), if anywhere


@dataclass(frozen=True)
class Applied:
    """What an ``apply`` changed, for the agent's log ("+3 -1 in 12 ms"); ``full`` when the device
    was rewritten whole (the Open vSwitch renderer's first sync after start) rather than patched."""

    added: int
    removed: int
    seconds: float
    detail: str = ""
    full: bool = False


class Renderer(ABC, Generic[Desired]):
    """Subclass this, register it as an entry point, and the agent can drive your device."""

    #: options the renderer understands (name → help), shown by ``policyfabric renderers``
    OPTIONS: ClassVar[Mapping[str, str]] = {}
    #: True if this renderer enforces policy for the host's endpoints in place of Open vSwitch
    #: (which then only forwards and checks port security), as the nftables renderer does
    TAKES_OVER_POLICY: ClassVar[bool] = False

    def __init__(self, context: RendererContext) -> None:
        unknown = sorted(set(context.options) - set(self.OPTIONS))
        if unknown:
            known = ", ".join(self.OPTIONS) or "none"
            raise RendererError(
                f"{type(self).__name__}: unknown option(s) {', '.join(unknown)} (known: {known})"
            )
        self.context = context

    @abstractmethod
    def compile(self, net: Network) -> Desired:
        """The desired device state for this view. Pure: no I/O, the same view gives an equal result."""

    @abstractmethod
    def apply(self, desired: Desired) -> Applied:
        """Make the device hold ``desired``. Raise on failure: the agent reports a fault and retries."""

    def watch(self, drifted: Callable[[str], None]) -> bool:
        """Optional: watch the device for changes made by anyone else (drift). On one, call
        ``drifted(what)`` (from any thread) after making sure the next ``apply`` restores the whole
        desired state, even an equal one: the agent then applies again at once, raises the fault
        ``drift-<renderer>`` and clears it once the device has stayed repaired. True if watching."""
        return False

    def unwatch(self) -> None:
        """Stop watching (the agent is stopping)."""


class DriftLatch:
    """What a watching renderer needs between its watcher's thread and its next ``apply``: the
    watcher's callback, wrapped (``wrap``) so that it first marks the device as changed by someone
    else; ``take`` (in ``apply``) says whether it was, once: that apply then writes the device
    whole. The built-in renderers use it; a plug-in may."""

    def __init__(self) -> None:
        self._set = threading.Event()

    def wrap(self, drifted: Callable[[str], None]) -> Callable[[str], None]:
        def on_drift(what: str) -> None:
            self._set.set()
            drifted(what)

        return on_drift

    def take(self) -> bool:
        """True once after each drift (the caller then forgets what the device holds)."""
        if not self._set.is_set():
            return False
        self._set.clear()
        return True


class RendererError(Exception):
    pass


def installed() -> dict[str, str]:
    """Renderer name → the object its entry point names."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def renderer_class(name: str) -> type[Renderer[object]]:
    """The class registered as ``name``; a RendererError says what is wrong or what is installed."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        have = ", ".join(sorted(installed())) or "none"
        raise RendererError(f"no renderer named {name!r} is installed (installed: {have})")
    try:
        cls = found[0].load()
    except Exception as exc:  # a broken plug-in must not take the agent down with a traceback
        raise RendererError(f"renderer {name!r} ({found[0].value}) failed to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Renderer)):
        raise RendererError(f"renderer {name!r} ({found[0].value}) is not a policyfabric Renderer subclass")
    return cls


def load(name: str, context: RendererContext) -> Renderer[object]:
    """Instantiate the renderer registered as ``name`` (its options checked)."""
    return renderer_class(name)(context)

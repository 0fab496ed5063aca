"""A thread that keeps one connection served for as long as the agent runs.

The DHCP responder and the rule log each hold a connection of their own to the bridge's
management socket, served from a thread: connect, serve until it fails, clean up, say so once per
outage (an ovs-vswitchd that is down for a minute is one warning, not sixty), try again a second
later, until stopped. That loop and ``stop`` are the same for both, so they live here once."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

log = logging.getLogger(__name__)


class ServiceThread:
    """Subclasses give ``_serve`` (make ``self._sock``, serve it until an ``OSError``; call
    ``_greeted`` once the peer's hello is in), and may give ``_lost`` (after each connection: clear
    what it set up) and ``_stopping`` (on ``stop``, before the socket is shut: wake whatever the
    thread waits on). ``what`` names it in the warning. ``connected``: greeted, and not lost since."""

    def __init__(self, name: str, what: str, retry: float = 1.0) -> None:
        self._what, self._retry = what, retry
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._stopping()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: the thread is leaving anyway
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)

    def _serve(self) -> None:
        raise NotImplementedError

    def _greeted(self) -> None:
        """The peer answered the hello: connected, and the outage (if any) is over."""
        self.connected.set()
        self._last_error = ""

    def _lost(self) -> None:
        """After each connection, whichever way it ended."""

    def _stopping(self) -> None:
        """On ``stop``, before the socket is shut."""

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except OSError as exc:
                if not self._stop.is_set() and str(exc) != self._last_error:  # once per outage
                    log.warning("%s: %s (retrying)", self._what, exc)
                self._last_error = str(exc)
            finally:
                self.connected.clear()
                self._lost()
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
            self._stop.wait(self._retry)

"""How the renderer's ``nft`` scripts reach the kernel: libnftables in this process, else ``nft -f``.

Why in process: once a member joining is one ``add element`` (delta.py), starting a process for
it is most of its cost: ``nft -f -`` (through ``ip netns exec`` in the lab) took 4 ms on an idle
2-core machine and 8-12 ms on a loaded one, to run a transaction libnftables, the library ``nft``
itself is built on and installed with, runs in ~0.05 ms. The script is the same text either way,
and either way one script is one kernel transaction.

The library's netlink socket belongs to the network namespace of the thread that opens it, so
every call runs on one thread of its own, which enters the renderer's namespace (``setns``, which
moves only the calling thread) before it opens anything: nothing else in the agent changes
namespace. The kernel closes each transaction with the ID of the task that committed it (``nft
monitor``: ``# new generation 4 by process 3500 (python)``), here that thread's: it is registered
as the renderer's own (``own``) before each commit, as the PID of each ``nft`` process was, so
the drift monitor (monitor.py) tells the renderer's changes from anyone else's in the same way.

Without libnftables (a system whose ``nft`` is linked statically, say), scripts go to ``nft -f -``
processes as before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from policyfabric.sh import CommandFailed, run

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"  # where ``ip netns`` mounts named namespaces


def _library() -> Any | None:
    """libnftables through ctypes (no binding to install), or None when it cannot be loaded."""
    try:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


_LIB = _library()


class Nft:
    """Runs ``nft`` scripts in network namespace ``netns`` (None: this process's), each one
    kernel transaction; ``library=False`` uses ``nft -f -`` processes even where libnftables is."""

    def __init__(self, netns: str | None, *, library: bool = True) -> None:
        self.netns = netns
        self.lib = _LIB if library else None
        self._ctx: int | None = None
        self._where: tuple[int, int] | None = None  # the namespace entered (device, inode)
        self._thread: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def in_process(self) -> bool:
        return self.lib is not None

    def run(self, script: str, own: Callable[[int], None] | None = None) -> None:
        """Run ``script``; ``own(id)`` is told the PID (or thread ID) that will commit it, first.
        Raises ``CommandFailed`` with nft's message when the kernel or the parser refuses it (the
        transaction then changed nothing)."""
        if self.lib is None:
            run(["nft", "-f", "-"], netns=self.netns, input=script, started=own)
            return
        with self._lock:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nft")
            thread = self._thread
        thread.submit(self._commit, script, own).result()

    def _commit(self, script: str, own: Callable[[int], None] | None) -> None:
        """On the library's thread: enter the namespace and open the context (again if the
        namespace of that name is not the one entered: deleted and made again), then commit."""
        lib = self.lib
        assert lib is not None
        where = _identity(self.netns)
        if self._ctx is None or where != self._where:
            if self._ctx is not None:
                lib.nft_ctx_free(self._ctx)
                self._ctx = None
            if self.netns is not None:
                _enter(self.netns)
            self._where = where
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise CommandFailed(["libnftables", "nft_ctx_new"], -1, "no context")
            lib.nft_ctx_buffer_output(ctx)  # what nft would print goes to buffers, not our stdout
            lib.nft_ctx_buffer_error(ctx)
            self._ctx = ctx
        if own is not None:
            own(threading.get_native_id())
        failed = lib.nft_run_cmd_from_buffer(self._ctx, script.encode()) != 0
        lib.nft_ctx_get_output_buffer(self._ctx)  # reading a buffer rewinds it: none grows
        error = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if failed:
            raise CommandFailed(["libnftables", f"netns={self.netns or '-'}"], 1, error)


def _identity(netns: str | None) -> tuple[int, int] | None:
    if netns is None:
        return None
    try:
        found = os.stat(os.path.join(NETNS_DIR, netns))
    except OSError as exc:
        raise CommandFailed(["stat", os.path.join(NETNS_DIR, netns)], exc.errno or 1, str(exc)) from exc
    return found.st_dev, found.st_ino


def _enter(netns: str) -> None:
    """Move the calling thread (only) into the named network namespace."""
    fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise CommandFailed(["setns", netns], code, os.strerror(code))
    finally:
        os.close(fd)

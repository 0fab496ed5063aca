"""OpFlex URIs: class names alternating with naming values, each followed by "/".

Naming values are percent-encoded: alphanumerics and ``-_.~`` stay, every
other byte becomes ``%xx`` in lower case (libopflex URIBuilder), so a URI
used as a naming value is escaped whole.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

_PLAIN = re.compile(r"[A-Za-z0-9._~-]*")
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~")

UNIVERSE = "/PolicyUniverse/"
EPR_L2 = "/EprL2Universe/"
EPR_L3 = "/EprL3Universe/"


@lru_cache(maxsize=1 << 16)
def escape(value: str) -> str:
    """Memoised: the authority rebuilds tenant trees often, and names repeat (profiled hot spot)."""
    if _PLAIN.fullmatch(value):
        return value
    return "".join(chr(b) if b in _SAFE else f"%{b:02x}" for b in value.encode())


def unescape(value: str) -> str:
    return unquote(value)


def child(parent: str, cls: str, *names: str) -> str:
    """The URI of a ``cls`` child of ``parent`` named by ``names`` (none for singletons)."""
    return parent + cls + "/" + "".join(escape(n) + "/" for n in names)


def space(tenant: str) -> str:
    """A tenant's PolicySpace."""
    return child(UNIVERSE, "PolicySpace", tenant)


def under(uri: str, prefix: str) -> bool:
    """Whether ``uri`` is ``prefix`` or inside its subtree."""
    return uri.startswith(prefix)

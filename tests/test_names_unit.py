"""Host and interface names (``model/types.py``): what agents write into endpoint records."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from policyfabric.model import objects as o
from policyfabric.model.types import check_hostname, check_interface


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("h1", "h1"),
        ("GW1", "gw1"),
        ("Compute-1.Example.COM", "compute-1.example.com"),
        ("1.2.3", "1.2.3"),  # RFC 1123 allows labels of digits
        ("a" * 63, "a" * 63),
        (".".join(["a" * 63] * 3) + "." + "b" * 61, ".".join(["a" * 63] * 3) + "." + "b" * 61),  # 253
    ],
)
def test_host_names_are_rfc_1123_and_lower_cased(given: str, stored: str) -> None:
    assert check_hostname(given) == stored


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "-h1",
        "h1-",
        "a..b",
        ".h1",
        "h1.",  # a trailing dot: not stored two ways
        "h_1",
        "h 1",
        "h1\n",  # a regex '$' would let this through
        "a" * 64,
        ".".join(["a" * 63] * 4),  # 255
        "\u212a8s",  # KELVIN SIGN lower-cases to an ASCII 'k'
        "hé",
        7,
        None,
    ],
)
def test_anything_else_is_not_a_host_name(bad: object) -> None:
    with pytest.raises(ValueError):
        check_hostname(bad)


@pytest.mark.parametrize("good", ["tap1", "eth0.100", "eth0:1", "vhu3f2a-01", "veth_a@b+c", "x" * 64])
def test_interface_names_as_linux_and_ovs_spell_them(good: str) -> None:
    assert check_interface(good) == good


@pytest.mark.parametrize("bad", ["", ".", "..", "tap 1", "tap/1", "tap1\n", "x" * 65, "ñ", 3])
def test_other_interface_names_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        check_interface(bad)


def test_an_endpoint_takes_an_fqdn_host_and_a_bounded_interface() -> None:
    ep = o.Endpoint(name="web1", tenant="acme", epg="web", host="Compute-1.Example.com", interface="tap1")
    assert ep.host == "compute-1.example.com"
    with pytest.raises(ValidationError):
        o.Endpoint(name="web1", tenant="acme", epg="web", interface="x" * 100_000)
    with pytest.raises(ValidationError):
        o.Endpoint(name="web1", tenant="acme", epg="web", host="not a host")

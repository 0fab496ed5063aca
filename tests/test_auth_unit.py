"""The tokens file (``--tokens``): what it accepts, how a mistake is reported (entry and field, never
the secret), and the lookup of a presented token."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from policyfabric.authority.auth import Principal, TokenError, load_tokens, parse_tokens

ADMIN = "admin-0123456789abcdef"
MEMBER = "member-0123456789abcdef"


def entry(**fields: Any) -> dict[str, Any]:
    return {"token": MEMBER, "role": "member", "tenant": "acme", **fields}


def refused(data: object) -> str:
    with pytest.raises(TokenError) as caught:
        parse_tokens(data, "tokens.yaml")
    return str(caught.value)


def test_a_good_file_gives_each_token_its_principal() -> None:
    tokens = parse_tokens(
        {
            "tokens": [
                {"token": ADMIN, "role": "admin", "name": "ops"},
                entry(),
                entry(token="r" * 16, role="reader"),
            ]
        },
        "tokens.yaml",
    )
    assert tokens.lookup(ADMIN) == Principal("ops", "admin")
    assert tokens.lookup(MEMBER) == Principal("tokens[1]", "member", "acme")  # unnamed: its place in the file
    assert tokens.lookup("r" * 16) == Principal("tokens[2]", "reader", "acme")
    for wrong in ("", MEMBER[:-1], MEMBER + "x", MEMBER.upper(), "é" * 20):
        assert tokens.lookup(wrong) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"tokens": [entry(role="admin")]},
            "tokens.yaml: tokens[0].tenant: an admin token spans every tenant",
        ),
        ({"tokens": [entry(tenant=None)]}, "tokens.yaml: tokens[0].tenant: a member token needs the tenant"),
        ({"tokens": [entry(), entry(role="root")]}, "tokens.yaml: tokens[1].role: Input should be 'admin'"),
        (
            {"tokens": [entry(tenant="Not_A_Name")]},
            "tokens.yaml: tokens[0].tenant: 'Not_A_Name' is not a valid",
        ),
        ({"tokens": [entry(tenants="acme")]}, "tokens.yaml: tokens[0].tenants: unknown field"),
        ({"tokens": [entry(token="short-secret")]}, "tokens.yaml: tokens[0].token: must be at least 16"),
        (
            {"tokens": [entry(token="has a space in it!!")]},
            "tokens.yaml: tokens[0].token: must be at least 16",
        ),
        ({"tokens": [entry(token=1234567890123456789)]}, "tokens.yaml: tokens[0].token: must be a string"),
        ({"tokens": [entry(), entry(name="x")]}, "tokens.yaml: tokens[1].token: the same token as tokens[0]"),
        (
            {"tokens": [entry(name="ci"), entry(token=ADMIN, role="admin", tenant=None, name="ci")]},
            "tokens.yaml: tokens[1].name: 'ci' also names tokens[0]",
        ),
        ({"tokens": []}, "tokens.yaml: tokens: List should have at least 1 item"),
        ({"token": []}, "tokens.yaml: tokens: field required"),
        ([entry()], "tokens.yaml: expected a mapping `tokens:"),
        (None, "tokens.yaml: expected a mapping `tokens:"),
    ],
)
def test_mistakes_name_the_entry_and_field(data: object, expected: str) -> None:
    message = refused(data)
    assert message.startswith(expected), message


@pytest.mark.parametrize("secret", ["short-secret", "has a space in it!!", MEMBER])
def test_no_message_quotes_a_token(secret: str) -> None:
    message = refused({"tokens": [entry(token=secret), entry(token=secret, role="nope")]})
    assert secret not in message and message.startswith("tokens.yaml: tokens[")


def test_the_file_is_read_checked_and_its_text_never_echoed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - {{token: {MEMBER}, role: member, tenant: acme}}\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        assert load_tokens(path).lookup(MEMBER) == Principal("tokens[0]", "member", "acme")
    assert caplog.records == []
    path.write_text(f"tokens:\n  - {{token: {MEMBER}, role: member, tenant: acme\n")  # unclosed: not YAML
    with pytest.raises(TokenError) as caught:
        load_tokens(path)
    assert str(caught.value).startswith(f"{path}, line ") and "not valid YAML" in str(caught.value)
    assert MEMBER not in str(caught.value)
    with pytest.raises(TokenError, match=r"cannot read the tokens file .*No such file"):
        load_tokens(tmp_path / "absent.yaml")


def test_a_file_others_can_read_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens: [{{token: {ADMIN}, role: admin}}]\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="policyfabric.authority.auth"):
        load_tokens(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"the tokens file {path} can be read by other users (mode 644): chmod 600 it"
    ]

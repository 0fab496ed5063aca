"""ICMP type and code of a security group rule, as nftables writes them.

Apart from ``ruleset.py``'s ``_l4`` (which calls it) so the one function that knows nftables'
ICMP syntax is in one place, and a rule without a type keeps exactly the text it had.
"""

from __future__ import annotations

from policyfabric.agent.view import Rule, SgRule


def icmp_match(rule: Rule) -> str:
    """``icmp type 8 icmp code 0`` (``icmpv6 ...`` for ICMPv6), or "" when the rule names no type.
    Numbers, not names: nftables takes any 0-255 type, and a name would have to be one it knows."""
    if not isinstance(rule, SgRule) or rule.icmp_type is None or rule.protocol not in (1, 58):
        return ""
    word = "icmp" if rule.protocol == 1 else "icmpv6"
    text = f"{word} type {rule.icmp_type}"
    return text if rule.icmp_code is None else f"{text} {word} code {rule.icmp_code}"

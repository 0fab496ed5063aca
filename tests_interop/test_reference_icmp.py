"""A security group rule's ICMP type and code reach the reference agent as the model's own
``icmpType``/``icmpCode`` on the rule's classifier (read back with ``gbp_inspect``): a reference
peer enforces the narrower rule, never a wider one."""

from __future__ import annotations

from policyfabric.model import kinds as k

from .conftest import TENANT, Stack
from .harness import wait_for
from .test_reference_agent import of, tree


def test_an_icmp_type_and_code_reach_the_reference_agent(stack: Stack) -> None:
    [sg] = stack.client.list(k.SECURITY_GROUP, TENANT, "ssh-from-app")
    body = {key: v for key, v in sg.items() if key not in ("id", "revision")}
    icmp = next(i for i, r in enumerate(body["rules"]) if r["protocol"] == "icmp")
    body["rules"][icmp] = {**body["rules"][icmp], "icmp_type": 8, "icmp_code": 0}
    stack.client.replace(k.SECURITY_GROUP, sg["id"], body)

    def narrowed() -> bool:
        clf = of(tree(stack), "GbpeL24Classifier").get(f"sg.ssh-from-app.{icmp}")
        return clf is not None and (clf.properties.get("icmpType"), clf.properties.get("icmpCode")) == (8, 0)

    wait_for("icmpType 8, icmpCode 0 in gbp_inspect", narrowed, 5.0, interval=0.1)

#!/usr/bin/env bash
# A devstack-like stack for the Neutron integration (docs/neutron.md): MariaDB, Keystone, Neutron
# with this driver, a policyfabric authority and a two-host lab, all under one private directory
# ($POLICYFABRIC_NEUTRON_STACK, default /tmp/pf-neutron-stack) on loopback ports. As root.
#   stack.sh up | down | env            (eval "$(stack.sh env)" for the openstack CLI)
#   stack.sh plug PORT_ID HOST | unplug PORT_ID | exec PORT_ID CMD...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${POLICYFABRIC_PYTHON:-$root/.venv/bin/python}"
if [ "${1:-}" = "up" ]; then
  "$root/scripts/install-neutron.sh"
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$here/harness/stack.py" "$@"

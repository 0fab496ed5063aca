#!/usr/bin/env bash
# Install what policyfabric needs on a Debian machine, then the package into
# .venv. Safe to run again: it installs only what is missing or changed.
#   scripts/bootstrap.sh          runtime only
#   scripts/bootstrap.sh test     runtime + test tools (and Keystone and etcd for the tests: install-keystone.sh,
#                                 install-etcd.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

EXTRAS="${1:-}"
# Open vSwitch (userspace datapath), namespaces and probes for the agent and the lab; ISC's DHCP
# client (dhclient, also DHCPv6) for the lab's `dhcp: true` endpoints, which boot like VMs.
APT_PACKAGES=(python3 python3-venv python3-pip openvswitch-switch iproute2 ethtool nftables iputils-ping
              isc-dhcp-client)

need_debian_packages bootstrap "${APT_PACKAGES[@]}"

# The newest python3 >= 3.11 on PATH (pyenv's or Debian's).
PYTHON="$(find_python 11 || true)"
[ -n "$PYTHON" ] || { echo "bootstrap: need Python >= 3.11 with venv" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

spec=".${EXTRAS:+[$EXTRAS]}"
stamp=".venv/.stamp-$(sha256sum pyproject.toml | cut -c1-16)-${EXTRAS:-runtime}"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing policyfabric${EXTRAS:+ with $EXTRAS extras} into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
  touch "$stamp"
fi

# The tests run a real Keystone (tests/test_keystone.py): MariaDB and Keystone, in a venv of
# their own (.cache/keystone-venv), never in .venv; and real etcd clusters (the etcd store,
# tests/test_etcd_store.py): Debian's etcd-server, its system service left off; and Debian's
# chromium, chromedriver and firefox-esr for the web console's browser tests (tests/test_console_browser.py).
case ",$EXTRAS," in
  *,test,*) scripts/install-keystone.sh; scripts/install-etcd.sh; scripts/install-browser.sh ;;
esac

#!/usr/bin/env bash
# Install what policyfabric needs on a Debian machine, then the package into
# .venv. Safe to run again: it installs only what is missing or changed.
#   scripts/bootstrap.sh          runtime only
#   scripts/bootstrap.sh test     runtime + test tools (and a Keystone for the tests: install-keystone.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${1:-}"
# Open vSwitch (userspace datapath), namespaces and probes for the agent and the lab.
APT_PACKAGES=(python3 python3-venv python3-pip openvswitch-switch iproute2 ethtool nftables iputils-ping)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]}; run as root, or install them first" >&2
    exit 1
  fi
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The newest python3 >= 3.11 on PATH (pyenv's or Debian's).
PYTHON=""
for candidate in python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PYTHON="$candidate"; break
  fi
done
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
# their own (.cache/keystone-venv), never in .venv.
case ",$EXTRAS," in
  *,test,*) scripts/install-keystone.sh ;;
esac

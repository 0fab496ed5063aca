#!/usr/bin/env bash
# Install what the Neutron integration's stack needs (integrations/neutron/stack.sh), each in a venv
# of its own, never policyfabric's .venv:
#   MariaDB and Keystone: scripts/install-keystone.sh (.cache/keystone-venv);
#   Neutron 29 with PyMySQL and gunicorn, plus this repository's driver (integrations/neutron,
#     editable): .cache/neutron-venv;
#   tempest 47 and the openstack CLI: .cache/tempest-venv.
# Safe to run again: it installs only what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

NEUTRON_PINS=(neutron==29.0.0 PyMySQL==1.2.4 gunicorn==27.0.1)
TEMPEST_PINS=(tempest==47.0.0 python-openstackclient==10.5.0)

scripts/install-keystone.sh
PYTHON="$(find_python 10 || true)"
[ -n "$PYTHON" ] || { echo "install-neutron: need Python >= 3.10 with venv" >&2; exit 1; }

install_venv() {  # VENV CHECK PINS...
  local venv="$1" check="$2"; shift 2
  local stamp="$venv/.stamp-$(printf '%s\n' "$@" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "install-neutron: installing $* into $venv"
    mkdir -p .cache
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
    "$venv/bin/python" -W ignore -c "$check"
    rm -f "$venv"/.stamp-*
    touch "$stamp"
  fi
}

install_venv .cache/neutron-venv 'import neutron, pymysql, gunicorn' "${NEUTRON_PINS[@]}"
# the driver, editable: a change to integrations/neutron needs no reinstall
if ! .cache/neutron-venv/bin/python -W ignore -c 'import networking_policyfabric' 2>/dev/null; then
  .cache/neutron-venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e integrations/neutron
fi
install_venv .cache/tempest-venv 'import tempest, openstackclient' "${TEMPEST_PINS[@]}"

#!/usr/bin/env bash
# Install a real OpenStack Keystone for the Keystone tests (tests/keystone_harness.py):
# MariaDB from Debian (mariadb-server; only its binaries are used: the tests run a private
# server in a temporary datadir, never the system's), and Keystone with PyMySQL and gunicorn
# in a venv of their own, .cache/keystone-venv, never the project's .venv.
# Safe to run again: it installs only what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

KEYSTONE_PINS=(keystone==30.0.0 PyMySQL==1.2.4 gunicorn==27.0.1)
VENV=.cache/keystone-venv

if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-keystone: mariadb-server is missing; run as root, or install it first" >&2
    exit 1
  fi
  echo "install-keystone: installing mariadb-server (its binaries only: the tests run their own server)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d: Debian would start the system's MariaDB right after installing it; the tests
  # need none, so refuse that start for the length of this install only.
  policy_rc=/usr/sbin/policy-rc.d
  if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
    chmod +x "$policy_rc"
    trap 'rm -f "$policy_rc"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends mariadb-server >/dev/null
fi

PYTHON="$(find_python 10 || true)"
[ -n "$PYTHON" ] || { echo "install-keystone: need Python >= 3.10 with venv" >&2; exit 1; }

stamp="$VENV/.stamp-$(printf '%s\n' "${KEYSTONE_PINS[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "install-keystone: installing ${KEYSTONE_PINS[*]} into $VENV"
  mkdir -p .cache
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${KEYSTONE_PINS[@]}"
  "$VENV/bin/python" -c 'import keystone, pymysql, keystoneauth1, gunicorn'  # fails loudly if broken
  rm -f "$VENV"/.stamp-*
  touch "$stamp"
fi

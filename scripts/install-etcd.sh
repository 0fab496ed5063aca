#!/usr/bin/env bash
# Install etcd from Debian (etcd-server: the `etcd` binary; etcd-client: `etcdctl`) for the etcd
# store (`policyfabric authority --store etcd://...`, docs/operations.md "Running on etcd") and its
# tests, which start their own three-member cluster on loopback under a private directory
# (policyfabric.lab.etcd). Only the binaries are used: the machine keeps no system etcd running.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if ! dpkg-query -W -f='${Status}' etcd-server etcd-client 2>/dev/null | grep -c "install ok installed" |
     grep -q '^2$'; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-etcd: etcd-server/etcd-client are missing; run as root, or install them first" >&2
    exit 1
  fi
  # policy-rc.d: Debian would start the system's etcd right after installing it; refuse that start
  # for the length of this install only (a policy-rc.d already there, as in containers, stays).
  policy_rc=/usr/sbin/policy-rc.d
  if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
    chmod +x "$policy_rc"
    trap 'rm -f "$policy_rc"' EXIT
  fi
  need_debian_packages install-etcd --no-recommends etcd-server etcd-client
fi

# The package enables its service: keep it from starting at boot, and stop one that runs anyway.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now etcd.service >/dev/null 2>&1 || true
elif command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/etcd ]; then
  update-rc.d etcd disable >/dev/null 2>&1 || true
  /etc/init.d/etcd stop >/dev/null 2>&1 || true
fi

# Captured, not piped to head: under pipefail, head closing the pipe early makes etcd die of
# SIGPIPE (exit 141) now and then, which failed CI once.
version="$(etcd --version)"  # fails loudly if the binary is broken
echo "${version%%$'\n'*}"

#!/usr/bin/env bash
# make neutron-test: the stack up, the end-to-end test (openstack CLI, ports on two lab hosts, real
# packets under security groups), tempest's network API tests, the stack down (always).
# The tempest counts are printed from its subunit results; TEMPEST_REGEX narrows the run.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${POLICYFABRIC_PYTHON:-$root/.venv/bin/python}"
trap '"$here/stack.sh" down' EXIT
start=$(date +%s)
"$here/stack.sh" up || exit 1
rc=0
PYTHONPATH="$root/src" "$py" -m pytest "$here/tests/test_e2e.py" -v -s -p no:cacheprovider -n 0 \
  --rootdir "$here" -c /dev/null || rc=1
"$here/stack.sh" tempest --regex "${TEMPEST_REGEX:-^tempest.api.network}" --concurrency "${TEMPEST_CONCURRENCY:-2}" \
  >"${TEMPEST_LOG:-/tmp/pf-neutron-tempest.log}" 2>&1
tempest_rc=$?
tail -n 12 "${TEMPEST_LOG:-/tmp/pf-neutron-tempest.log}"
[ "$tempest_rc" -eq 0 ] || rc=1
echo "neutron-test: $(( $(date +%s) - start )) s, e2e and tempest rc=$rc (tempest log: ${TEMPEST_LOG:-/tmp/pf-neutron-tempest.log})"
exit $rc

#!/usr/bin/env bash
# bench/peers.sh -- golb front-end for the shared peers harness (../shared/peers/peers.sh --cmd).
# Reads PORT (listen port, 127.0.0.1) and BACKENDS (host:port,host:port) from the environment,
# writes a golb YAML (to $GOLB_PEERS_YAML, default a temp file) and execs twistd in the foreground.
# GOLB_TWISTD picks the twistd (e.g. .venv-pypy/bin/twistd for PyPy).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${PORT:?PORT not set}" "${BACKENDS:?BACKENDS not set}"
CFG=${GOLB_PEERS_YAML:-$(mktemp /tmp/golb-peers-XXXXXX.yaml)}
{
  echo "listeners:"
  echo "  - name: peers"
  echo "    address: \"127.0.0.1:$PORT\""
  echo "backend_pools:"
  echo "  - name: default"
  echo "    algorithm: round_robin"
  echo "    backends:"
  for b in ${BACKENDS//,/ }; do echo "      - url: http://$b"; done
  # Metrics on (as by default), on a port of their own; no access log (the
  # peers log nothing either); the admin site on a free port.
  echo "monitoring:"
  echo "  prometheus: {enabled: true, address: \"127.0.0.1:${GOLB_METRICS_PORT:-19090}\"}"
  echo "  logging: {access_log: {enabled: false}}"
  echo "admin: {enabled: false}"
} >"$CFG"
TWISTD=${GOLB_TWISTD:-$HERE/../.venv/bin/twistd}
# PyPy's default nursery (half the L2 cache) makes a minor collection every few
# requests; 16 MB is what docs/performance.md recommends (CPython ignores it).
export PYPY_GC_NURSERY=${PYPY_GC_NURSERY:-16MB}
exec "$TWISTD" -n --pidfile= golb --config "$CFG"

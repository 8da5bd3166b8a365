#!/usr/bin/env bash
# Installs the system packages the test suite uses (Debian): h2load, redis-server, openssl,
# a C compiler (the native PII scan, plugins/_scan.c; tests/plugins/test_detect_native.py
# fails when `make venv` could not build it).
set -euo pipefail
need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v redis-server >/dev/null || need+=(redis-server)
command -v openssl >/dev/null || need+=(openssl)
command -v cc >/dev/null || need+=(gcc libc6-dev)
# Node and Go come with this machine kind; on a bare Debian these are the fallbacks
# (Debian's Go is older than go.mod asks: Go then fetches the toolchain from the module proxy).
command -v node >/dev/null || need+=(nodejs npm)
command -v go >/dev/null || need+=(golang-go)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing: ${need[*]} (install with: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

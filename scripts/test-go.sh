#!/usr/bin/env bash
# The Go client and example gateway suite (`make test-go`): `go vet` and `go test` in
# clients/go, against a real `ringd serve` from the repository's .venv (or $RINGD_BIN).
# Without go it skips (exit 0), except under CI=true, where a missing toolchain fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! command -v go >/dev/null 2>&1; then
  if [ "${CI:-}" = true ]; then
    echo "FAIL: Go tests need go (apt-get install golang-go) (CI=true: a missing toolchain fails the build)" >&2
    exit 1
  fi
  echo "SKIP: Go tests need go (apt-get install golang-go)"
  exit 0
fi
if [ -z "${RINGD_BIN:-}" ] && [ ! -x "$root/.venv/bin/ringd" ]; then
  echo "FAIL: no ringd to test against: run \`make venv\` first (or set RINGD_BIN)" >&2
  exit 1
fi

cd "$root/clients/go"
echo "$(go version): go vet and go test in clients/go"
go vet ./...
# -count=1: the suites run a Python server whose code Go's test cache cannot see.
go test -count=1 ./...

#!/usr/bin/env bash
# The Go client and example gateway suite (`make test-go`): `go vet` and `go test` in
# clients/go, then a tiny gateway in a separate module that depends on clients/go through
# a replace directive. Both against a real `ringd serve` from the repository's .venv (or $RINGD_BIN).
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

# A separate module, as a Go developer's project would be: it depends on the client
# module through a replace directive (as the README says), builds, and its tiny
# gateway's test runs against a real ringd.
ringd_bin=${RINGD_BIN:-$root/.venv/bin/ringd}
work=$(mktemp -d "${TMPDIR:-/tmp}/ringd-go-standalone.XXXXXX")
ringd_pid=""
cleanup() {
  if [ -n "$ringd_pid" ]; then
    kill "$ringd_pid" 2>/dev/null || true
    wait "$ringd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
cp "$root/clients/testdata/go-standalone/"*.go "$work/"
cat >"$work/go.mod" <<GOMOD
module example.com/tinygateway

go 1.26.0

require github.com/ringd/ringd/clients/go v0.0.0

// Until the module is published at its path, point it at a checkout of ringd.
replace github.com/ringd/ringd/clients/go => $root/clients/go
GOMOD
echo "a separate module ($work): go mod tidy, go build, go vet, go test against ringd"
(cd "$work" && go mod tidy && go build -o tinygateway . && go vet ./...)
# ringd writes one JSON line to --ready-fd once it serves (its machine-readable ready signal).
RINGD_STORE="$work/ringd.db" RINGD_LOG_LEVEL=WARNING "$ringd_bin" serve \
  --config "$root/clients/testdata/ringd-test.yaml" --listen 127.0.0.1:0 --ready-fd 3 \
  3>"$work/ready.json" >"$work/ringd.out" 2>"$work/ringd.err" &
ringd_pid=$!
target=""
for _ in $(seq 1 300); do
  target=$(sed -n 's/.*"listen": *\[ *"\(127\.0\.0\.1:[0-9]*\)".*/\1/p' "$work/ready.json" | head -n 1)
  [ -n "$target" ] && break
  if ! kill -0 "$ringd_pid" 2>/dev/null; then
    cat "$work/ringd.err" >&2
    echo "FAIL: ringd exited before it listened" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$target" ]; then
  cat "$work/ringd.err" >&2
  echo "FAIL: ringd gave no ready signal within 30 s" >&2
  exit 1
fi
(cd "$work" && RINGD_TARGET=$target go test -count=1 ./...)

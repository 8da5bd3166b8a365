#!/usr/bin/env bash
# The Node client and example gateway suite (`make test-node`): the typings under tsc, then
# clients/node/test/*.test.js under `node --test` (the packed-tarball install included),
# against a real `ringd serve` from the repository's .venv (or $RINGD_BIN).
# Without node/npm it skips (exit 0), except under CI=true, where a missing toolchain fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

missing() {
  if [ "${CI:-}" = true ]; then
    echo "FAIL: $1 (CI=true: a missing toolchain fails the build)" >&2
    exit 1
  fi
  echo "SKIP: $1"
  exit 0
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing "Node.js tests need node and npm (apt-get install nodejs npm)"
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
  missing "Node.js tests need Node 18 or newer (found $(node --version))"
fi
if [ -z "${RINGD_BIN:-}" ] && [ ! -x "$root/.venv/bin/ringd" ]; then
  echo "FAIL: no ringd to test against: run \`make venv\` first (or set RINGD_BIN)" >&2
  exit 1
fi

cd "$root/clients/node"
# npm writes node_modules/.package-lock.json on every install: older than the
# manifest or the lock file means node_modules is stale.
hidden=node_modules/.package-lock.json
if [ ! -f "$hidden" ] || [ package.json -nt "$hidden" ] || [ package-lock.json -nt "$hidden" ]; then
  npm ci --no-audit --no-fund
fi
echo "node $(node --version): tsc on the typings, then node --test clients/node/test"
# The typings must narrow on `action` (test/types/narrowing.ts fails to compile otherwise).
node_modules/.bin/tsc -p test/types
# test/packed.test.js packs the package and installs it in a new project outside the
# repository (dependencies from the npm registry).
exec node --test test/*.test.js

#!/usr/bin/env bash
# The WASM plugins' modules (wasm/modules/*.wasm) from their AssemblyScript sources (wasm/src/*.ts).
#   scripts/build-wasm.sh           rebuild them (`make wasm`); commit the result
#   scripts/build-wasm.sh --check   fail when a rebuild would change a committed module (`make check-wasm`)
# The build is byte-reproducible: the compiler versions are pinned in wasm/package-lock.json.
# Without node/npm it skips (exit 0), except under CI=true, where a missing toolchain fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "${CI:-}" = true ]; then
    echo "FAIL: building the WASM modules needs node and npm (CI=true: a missing toolchain fails)" >&2
    exit 1
  fi
  echo "SKIP: building the WASM modules needs node and npm (apt-get install nodejs npm)"
  exit 0
fi

cd "$root/wasm"
# npm writes node_modules/.package-lock.json on every install: older than the
# manifest or the lock file means node_modules is stale.
hidden=node_modules/.package-lock.json
if [ ! -f "$hidden" ] || [ package.json -nt "$hidden" ] || [ package-lock.json -nt "$hidden" ]; then
  npm ci --no-audit --no-fund
fi
if [ "${1:-}" = --check ]; then
  exec node build.mjs --check modules
fi
exec node build.mjs modules

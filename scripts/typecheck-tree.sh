#!/usr/bin/env bash
# mypy cannot follow setuptools' editable-install finder, so give it the `ringd`
# package as the installed layout has it: a tree of symlinks under .venv/typecheck.
set -euo pipefail
cd "$(dirname "$0")/.."
root=.venv/typecheck/ringd
rm -rf .venv/typecheck
mkdir -p "$root"
top=$PWD
ln -s "$top/src/ringd/__init__.py" "$root/__init__.py"
ln -s "$top/src/ringd/py.typed" "$root/py.typed"
ln -s "$top/src/ringd/v1" "$root/v1"
ln -s "$top/sdk" "$root/sdk"
ln -s "$top/server" "$root/server"
ln -s "$top/plugins" "$root/plugins"
ln -s "$top/clients/python" "$root/client"
ln -s "$top/testing" "$root/testing"

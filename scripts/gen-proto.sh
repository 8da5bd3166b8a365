#!/usr/bin/env bash
# Regenerates the committed stubs of the ringd.v1 contract (proto/ringd/v1/*.proto):
#   Python messages, gRPC stubs and their .pyi  -> src/ringd/v1/      (import ringd.v1.*)
#   a descriptor set with the proto comments    -> src/ringd/v1/descriptor_set.binpb
#     (every file and its imports, --include_source_info: what server reflection
#      serves, so `grpcurl describe` prints each field's documentation)
#   Go messages and gRPC stubs                  -> clients/go/ringdv1/ (package ringdv1)
#   the .proto files, copied                    -> clients/node/proto/ringd/v1/
#     (the npm package loads them from inside itself, so it installs alone)
#
# Usage:
#   scripts/gen-proto.sh           regenerate in place (make proto)
#   scripts/gen-proto.sh --check   regenerate into a temp dir, print the difference
#                                  and exit 1 when the committed stubs are stale
#                                  (make check-proto; the CI drift check)
#
# Every generator is pinned so the output is reproducible: protoc and the Python
# plugins come from .venv (grpcio-tools, mypy-protobuf, pinned in pyproject.toml);
# the Go plugins are installed into .venv/gobin at the versions below. Go is
# needed for the Go stubs: without it the Go part is skipped with a warning,
# except under CI=true, where that is an error.
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12     # google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2  # google.golang.org/grpc/cmd/protoc-gen-go-grpc
GO_MODULE=github.com/ringd/ringd/clients/go

PY_OUT=src/ringd/v1
GO_OUT=clients/go/ringdv1
PY_GENERATED=('*_pb2.py' '*_pb2.pyi' '*_pb2_grpc.py' '*_pb2_grpc.pyi' 'descriptor_set.binpb')
GO_GENERATED=('*.pb.go')
NODE_OUT=clients/node/proto/ringd/v1
NODE_GENERATED=('*.proto')

die() { echo "gen-proto: $*" >&2; exit 1; }
note() { echo "gen-proto: $*" >&2; }

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (usage: scripts/gen-proto.sh [--check])" ;;
esac
[ $# -le 1 ] || die "too many arguments (usage: scripts/gen-proto.sh [--check])"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
venv=$root/.venv
python=$venv/bin/python
gobin=$venv/gobin
export LC_ALL=C # stable glob and sort order

[ -x "$python" ] || die "no $venv: run 'make venv' first"
for tool in protoc-gen-mypy protoc-gen-mypy_grpc; do
  [ -x "$venv/bin/$tool" ] || die "$venv/bin/$tool is missing: run 'make venv' (mypy-protobuf)"
done
"$python" -c 'import grpc_tools.protoc' 2>/dev/null \
  || die "grpc_tools is missing from $venv: run 'make venv' (grpcio-tools)"

protos=(proto/ringd/v1/*.proto)
[ -e "${protos[0]}" ] || die "no .proto files under proto/ringd/v1"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gen-proto.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
gen=$tmp/generated

# protoc is grpc_tools' bundled one; `python -m grpc_tools.protoc` adds the
# include path of the well-known types (google/protobuf/*.proto) itself.
protoc() { "$python" -m grpc_tools.protoc -I proto "$@"; }

# --- Python ------------------------------------------------------------------
mkdir -p "$gen/src"
protoc \
  --plugin=protoc-gen-mypy="$venv/bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$venv/bin/protoc-gen-mypy_grpc" \
  --python_out="$gen/src" --grpc_python_out="$gen/src" \
  --mypy_out="$gen/src" --mypy_opt=quiet \
  --mypy_grpc_out="$gen/src" --mypy_grpc_opt=quiet \
  "${protos[@]}"
protoc --include_imports --include_source_info \
  --descriptor_set_out="$gen/src/ringd/v1/descriptor_set.binpb" "${protos[@]}"

# --- Node ---------------------------------------------------------------------
mkdir -p "$gen/$NODE_OUT"
cp "${protos[@]}" "$gen/$NODE_OUT/"

# --- Go ----------------------------------------------------------------------
# go_tool NAME PACKAGE VERSION EXPECTED_VERSION_LINE: installs PACKAGE@VERSION into
# .venv/gobin unless the binary there already reports EXPECTED_VERSION_LINE.
go_tool() {
  local name=$1 package=$2 version=$3 expected=$4 have=""
  if [ -x "$gobin/$name" ]; then
    have=$("$gobin/$name" --version 2>/dev/null || true)
  fi
  if [ "$have" != "$expected" ]; then
    note "installing $package@$version into $gobin"
    GOBIN=$gobin go install "$package@$version" || die "could not install $package@$version"
    have=$("$gobin/$name" --version 2>/dev/null || true)
    [ "$have" = "$expected" ] || die "$gobin/$name reports '$have', expected '$expected'"
  fi
}

with_go=true
if ! command -v go >/dev/null 2>&1; then
  if [ "${CI:-}" = true ]; then
    die "go is not on PATH; CI needs it to check the Go stubs in $GO_OUT"
  fi
  note "go is not on PATH: skipping the Go stubs in $GO_OUT (install Go to generate them)"
  with_go=false
fi

if $with_go; then
  go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go \
    "$PROTOC_GEN_GO_VERSION" "protoc-gen-go $PROTOC_GEN_GO_VERSION"
  go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc \
    "$PROTOC_GEN_GO_GRPC_VERSION" "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}"
  mkdir -p "$gen/clients/go"
  # module= strips the module path from go_package, so the files land in ringdv1/.
  protoc \
    --plugin=protoc-gen-go="$gobin/protoc-gen-go" \
    --plugin=protoc-gen-go-grpc="$gobin/protoc-gen-go-grpc" \
    --go_out="$gen/clients/go" --go_opt=module="$GO_MODULE" \
    --go-grpc_out="$gen/clients/go" --go-grpc_opt=module="$GO_MODULE" \
    "${protos[@]}"
fi

# copy_generated FROM TO DIR PATTERN...: copies the files of FROM/DIR that match a
# pattern into TO/DIR (hand-written files such as __init__.py are left alone).
copy_generated() {
  local from=$1 to=$2 dir=$3 pattern file
  shift 3
  mkdir -p "$to/$dir"
  for pattern in "$@"; do
    for file in "$from/$dir"/$pattern; do
      [ -f "$file" ] && cp "$file" "$to/$dir/"
    done
  done
  return 0
}

# remove_generated DIR PATTERN...: deletes DIR's generated files, stale ones included.
remove_generated() {
  local dir=$1 pattern
  shift
  for pattern in "$@"; do
    rm -f "$dir"/$pattern
  done
}

outputs="$PY_OUT, $NODE_OUT"
if $with_go; then outputs+=", $GO_OUT"; fi

if $check; then
  copy_generated "$root" "$tmp/committed" "$PY_OUT" "${PY_GENERATED[@]}"
  copy_generated "$root" "$tmp/committed" "$NODE_OUT" "${NODE_GENERATED[@]}"
  if $with_go; then
    copy_generated "$root" "$tmp/committed" "$GO_OUT" "${GO_GENERATED[@]}"
  fi
  if ! (cd "$tmp" && diff -ru committed generated); then
    die "the committed stubs differ from what proto/ generates (diff above: committed vs generated); run 'make proto' and commit the result"
  fi
  note "stubs are up to date ($outputs)"
  exit 0
fi

mkdir -p "$PY_OUT"
remove_generated "$PY_OUT" "${PY_GENERATED[@]}"
copy_generated "$gen" "$root" "$PY_OUT" "${PY_GENERATED[@]}"
mkdir -p "$NODE_OUT"
remove_generated "$NODE_OUT" "${NODE_GENERATED[@]}"
copy_generated "$gen" "$root" "$NODE_OUT" "${NODE_GENERATED[@]}"
if $with_go; then
  mkdir -p "$GO_OUT"
  remove_generated "$GO_OUT" "${GO_GENERATED[@]}"
  copy_generated "$gen" "$root" "$GO_OUT" "${GO_GENERATED[@]}"
fi
note "regenerated $outputs"

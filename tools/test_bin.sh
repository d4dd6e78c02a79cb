#!/usr/bin/env bash
# Prints the path of the release build of integration test NAME (building it if needed):
# `tools/test_bin.sh kernels`. Cargo also lists the CLI binary it builds for the tests, in no
# fixed order, so this picks the artifact whose target is the test itself; none is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
exe=$(cargo test --release --test "$1" --no-run --message-format=json 2>/dev/null \
  | grep '"kind":\["test"\]' | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4 || true)
[ -n "$exe" ] && [ -x "$exe" ] || { echo "error: no test binary for --test $1" >&2; exit 1; }
echo "$exe"

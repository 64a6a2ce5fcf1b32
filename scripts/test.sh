#!/usr/bin/env bash
# Run the checks: setup (dev), ruff, pytest. Extra arguments go to pytest:
#   bash scripts/test.sh                       everything
#   bash scripts/test.sh tests/test_netlab.py -x
# Tests that need root/network namespaces/tshark are skipped outside CI and FAIL under CI=true.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh --dev

dirs=()
for d in mcobserve tests bench; do
  [ -d "$d" ] && dirs+=("$d")
done
echo "test: ruff check ${dirs[*]}"
.venv/bin/ruff check "${dirs[@]}"

echo "test: pytest -q $*"
exec .venv/bin/pytest -q "$@"

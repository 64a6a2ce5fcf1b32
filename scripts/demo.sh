#!/usr/bin/env bash
# Install everything (.venv with mcobserve, system tools when root) and run the live demo:
# a private namespace LAN with a server, a sensor and three observers. Extra arguments go to
# `mcobserve demo` (e.g. --observers 5 --updates 10 --ipv4).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/mcobserve demo "$@"

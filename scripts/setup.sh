#!/usr/bin/env bash
# Idempotent setup for mcobserve.
#   bash scripts/setup.sh         system tools + .venv with the package (pip install -e .)
#   bash scripts/setup.sh --dev   the same with the test extras (pip install -e '.[test]')
# System tools (tshark, text2pcap, coap-client-notls, nft, iptables, ip, nats-server) are installed with apt-get when
# missing and we are root; otherwise the missing ones are listed and setup continues.
# Quiet on success; on failure the full output of the failing step is shown.
set -euo pipefail

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { echo "setup: $*"; }

# Run a command quietly; if it fails, show everything it printed and fail.
quiet() {
  local log rc=0
  log="$(mktemp)"
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "setup: FAILED ($rc): $*" >&2
    cat "$log" >&2
  fi
  rm -f "$log"
  return "$rc"
}

# --- 1. system tools ------------------------------------------------------------------------------
APT_PACKAGES=(tshark libcoap3-bin nftables iptables iproute2 nats-server)
missing=()
for tool in tshark text2pcap coap-client-notls nft iptables ip nats-server; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing system packages for: ${missing[*]} (apt-get: ${APT_PACKAGES[*]})"
    if command -v debconf-set-selections >/dev/null 2>&1; then
      echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    fi
    quiet apt-get update
    quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
    still=()
    for tool in "${missing[@]}"; do
      PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 || still+=("$tool")
    done
    if [ "${#still[@]}" -gt 0 ]; then
      say "WARNING: still missing after apt-get: ${still[*]}" >&2
    fi
  else
    say "WARNING: missing system tools: ${missing[*]}" >&2
    say "  install them as root: apt-get install --no-install-recommends ${APT_PACKAGES[*]}" >&2
    say "  (tests that need them are skipped; under CI=true they fail)" >&2
  fi
fi

# --- 2. Python 3.11+ and the virtual environment ---------------------------------------------------
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; }

PYTHON=""
for cand in python3 python3.13 python3.12 python3.11; do
  if command -v "$cand" >/dev/null 2>&1 && py_ok "$cand"; then
    PYTHON="$("$cand" -c 'import sys; print(sys.executable)')"
    break
  fi
done
if [ -z "$PYTHON" ]; then
  echo "setup: ERROR: no Python 3.11 or newer on PATH (found: $(python3 -V 2>&1 || echo none))" >&2
  exit 1
fi

VENV="$ROOT/.venv"
if [ -d "$VENV" ] && ! py_ok "$VENV/bin/python"; then
  say "recreating broken or outdated .venv"
  rm -rf "$VENV"
fi
if [ ! -d "$VENV" ]; then
  say "creating .venv with $PYTHON ($("$PYTHON" -V 2>&1))"
  if ! quiet "$PYTHON" -m venv "$VENV"; then
    rm -rf "$VENV"
    echo "setup: ERROR: '$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi

# --- 3. the package (skipped when pyproject.toml and the mode are unchanged since the last success) --
if [ "$DEV" -eq 1 ]; then TARGET=".[test]"; else TARGET="."; fi
STAMP="$VENV/.mcobserve-setup"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $TARGET"
# A --dev install also satisfies a plain one.
if [ -f "$STAMP" ] && { [ "$(cat "$STAMP")" = "$WANT" ] || { [ "$DEV" -eq 0 ] && [ "$(cat "$STAMP")" = "${WANT% *} .[test]" ]; }; } \
   && "$VENV/bin/python" -c 'import mcobserve' >/dev/null 2>&1; then
  say "package already installed in .venv ($TARGET)"
else
  say "pip install -e '$TARGET' into .venv"
  quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$TARGET"
  echo "$WANT" >"$STAMP"
fi
say "done ($("$VENV/bin/python" -V 2>&1) in .venv)"

#!/usr/bin/env bash
# The differential test against the OpenHands SDK: the scripted trajectories of
# scripts/openhands_diff/trajectories.json run through the SDK (openhands-sdk and
# openhands-tools 1.58.2 from PyPI, every dependency pinned by
# scripts/openhands_diff/requirements.lock.txt) and through
# `fleet run --workspace local`; the observations each agent sent back to one
# scripted LLM are compared one by one. Every difference must be listed, with its
# reason, under `known` in trajectories.json (and in the README's "where we differ
# on purpose"); anything else fails (exit 1).
#
#   scripts/openhands-diff.sh [--only NAME] [--json FILE]
#
# Needs a Python >= 3.12 (pyenv's, or python3.12/python3.13 on PATH) and PyPI the
# first time: the venv is made once under the user's cache directory (a few
# minutes) and reused. The SDK's default terminal runs in tmux, which is installed
# with apt-get when missing (as its users get it). Uses FLEET_BIN, or builds the
# debug `fleet`. Listens on 127.0.0.1 only; every process it starts ends with it.
set -euo pipefail
cd "$(dirname "$0")/.."

SDK_VERSION=1.58.2
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/agent-fleet/openhands-$SDK_VERSION"
LOCK=scripts/openhands_diff/requirements.lock.txt

log() { echo "openhands-diff: $*" >&2; }
die() { log "$*"; exit 1; }

find_python() {
    local root c
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    for c in python3.13 python3.12 "$root"/versions/3.1[2-9]*/bin/python3; do
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

sdk_ready() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$SDK_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import openhands.sdk, openhands.tools  # noqa: F401
sys.exit(version("openhands-sdk") != sys.argv[1])
PY
}

if ! sdk_ready; then
    py=$(find_python) || die "needs a Python >= 3.12 (pyenv or python3.12 on PATH)"
    log "installing openhands-sdk $SDK_VERSION into $VENV (once; a few minutes)"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$py" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$LOCK" || die "pip install failed"
    sdk_ready || die "the SDK is not importable after the install"
fi

if ! command -v tmux >/dev/null 2>&1; then
    log "installing tmux (the SDK's default terminal)"
    apt-get update -qq && apt-get install -y -qq tmux >/dev/null || die "could not install tmux"
fi

fleet=${FLEET_BIN:-}
if [ -z "$fleet" ]; then
    cargo build --quiet --bin fleet
    fleet=target/debug/fleet
fi

export OPENHANDS_SUPPRESS_BANNER=1
# LiteLLM would fetch its price table from the internet: the local copy serves.
export LITELLM_LOCAL_MODEL_COST_MAP=True
# The SDK logs errors only; the comparison goes to stdout.
LOG_LEVEL=ERROR exec "$VENV/bin/python" -W ignore scripts/openhands_diff/driver.py --fleet "$fleet" "$@"

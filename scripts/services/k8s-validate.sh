#!/usr/bin/env bash
# The schema check of deploy/k8s: `kubernetes-validate` (PyPI, pinned; it ships the
# Kubernetes JSON schemas, so it needs no network when it runs) in a venv under
# the user's cache dir. Prints the environment to use (eval-able `export` lines).
# Idempotent; starts nothing.
set -euo pipefail

VERSION=1.37.0
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/agent-fleet/kubernetes-validate-$VERSION"
bin="$VENV/bin/kubernetes-validate"

if ! [ -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$VERSION"; then
    command -v python3 >/dev/null || { echo "k8s-validate.sh: python3 is required" >&2; exit 1; }
    mkdir -p "$(dirname "$VENV")"
    # As scripts/services/s3.sh: the system pip installs into a venv of our own.
    [ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages --without-pip "$VENV" >&2
    python3 -m pip --python "$VENV/bin/python" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$VERSION" >&2
    "$bin" --version >&2
fi
echo "export FLEET_K8S_VALIDATE=$bin"

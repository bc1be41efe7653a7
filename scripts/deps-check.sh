#!/usr/bin/env bash
# Dependency checks with cargo-deny (deny.toml): licences, bans and sources (no
# network needed), then the RustSec advisories against Cargo.lock.
#
# The advisory database is a git repository (github.com/RustSec/advisory-db) that
# cargo-deny fetches each run. Where it cannot be fetched, this says so loudly and
# the advisories are not checked; the other checks still fail the run. Point
# FLEET_ADVISORY_DB_URL at a mirror of the repository (a git URL with a host name,
# e.g. git://localhost:9418/advisory-db served by `git daemon`; cargo-deny refuses
# file:// URLs) to check against it instead.
#
# Installs cargo-deny (pinned) from crates.io when missing: about 13 minutes of
# compiling on a busy 2-core machine, once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."

DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qF "$DENY_VERSION"; then
    echo "deps-check.sh: installing cargo-deny $DENY_VERSION" >&2
    cargo install --locked cargo-deny --version "$DENY_VERSION"
fi

cargo deny --locked check --hide-inclusion-graph licenses bans sources

config=deny.toml
tmp=
if [ -n "${FLEET_ADVISORY_DB_URL:-}" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    sed "s|^ignore = \[\]|db-urls = [\"$FLEET_ADVISORY_DB_URL\"]\nignore = []|" deny.toml >"$tmp/deny.toml"
    config="$tmp/deny.toml"
fi
log=$(mktemp)
if cargo deny --locked --config "$config" check --hide-inclusion-graph advisories 2>"$log"; then
    cat "$log" >&2
    echo "deps-check.sh: advisories ok" >&2
elif grep -qiE "failed to (fetch|open) advisory database|unable to (fetch|clone)|error sending request|failed to connect|could not resolve" "$log"; then
    cat "$log" >&2
    echo "deps-check.sh: WARNING: advisories NOT CHECKED: the RustSec advisory database could not be fetched from here (set FLEET_ADVISORY_DB_URL to a reachable mirror)" >&2
else
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"

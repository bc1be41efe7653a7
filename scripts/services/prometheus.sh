#!/usr/bin/env bash
# Prometheus and promtool for the tests that check deploy/prometheus and
# deploy/grafana against a real Prometheus (tests/it/prometheus.rs). Installs
# Debian's `prometheus` package (it brings promtool) when either is missing.
# Idempotent; run as root on Debian.
#
# No daemon is started: the tests start their own `prometheus` processes, each
# with a generated config, a temporary TSDB and a loopback port, and stop them.
# The package's service is kept from starting at install time (policy-rc.d), so
# nothing listens on :9090 behind the tests' back.
#
#   prometheus.sh [install]  install when missing; print the versions
#   prometheus.sh status     exit 0 iff prometheus and promtool are on PATH
set -euo pipefail

log() { echo "prometheus.sh: $*" >&2; }

installed() {
    command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1
}

install() {
    if installed; then
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        log "prometheus/promtool are missing: run as root or 'apt-get install prometheus'"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # The package list is needed only when apt does not know the package yet.
    if ! apt-cache show prometheus >/dev/null 2>&1; then
        apt-get update -q
    fi
    # Without an init system the package's postinst may still try to start the
    # service; a policy-rc.d that denies it (unless one is already there) keeps
    # the install side-effect free.
    local policy=/usr/sbin/policy-rc.d added=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added=1
    fi
    log "installing prometheus (Debian package; brings promtool)"
    local rc=0
    apt-get install -y -q --no-install-recommends prometheus >/dev/null || rc=$?
    if [ -n "$added" ]; then
        rm -f "$policy"
    fi
    if [ "$rc" != 0 ]; then
        log "apt-get install prometheus failed ($rc)"
        exit "$rc"
    fi
    installed || { log "prometheus installed but not on PATH"; exit 1; }
}

case "${1:-install}" in
    install)
        install
        prometheus --version 2>&1 | head -n1 >&2
        promtool --version 2>&1 | head -n1 >&2
        ;;
    status) installed ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
    *)
        log "unknown command: $1 (install|status)"
        exit 2
        ;;
esac

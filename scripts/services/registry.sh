#!/usr/bin/env bash
# A container registry for the image-pull tests: Debian's `docker-registry`
# (the CNCF distribution registry) on 127.0.0.1, plain HTTP (Docker allows
# 127.0.0.0/8 registries without TLS by default), htpasswd auth, with the test
# workspace image pushed as 127.0.0.1:$PORT/fleet/workspace:test.
#
#   registry.sh [up]   install it when missing, start it unless something answers
#                      on the port, wait until ready, push the image, print the
#                      environment to use (eval-able `export` lines on stdout)
#   registry.sh down   terminate the registry we started (by its saved PID)
#   registry.sh env    print the environment to use
#
# Its access log ($STATE_DIR/registry.log) is the tests' independent evidence of
# what was pulled. Environment: FLEET_TEST_REGISTRY_PORT (default 18200).
# Idempotent; never kills anything it did not start.
set -euo pipefail

HOST=127.0.0.1
PORT=${FLEET_TEST_REGISTRY_PORT:-18200}
ADDR="$HOST:$PORT"
USER_NAME=fleet
PASSWORD=fleet-test-registry
STATE_DIR="${TMPDIR:-/tmp}/agent-fleet-registry-$PORT"
PID_FILE="$STATE_DIR/registry.pid"
LOG_FILE="$STATE_DIR/registry.log"
# The client config used to push (never the user's own ~/.docker).
PUSH_CONFIG="$STATE_DIR/docker"
SOURCE_IMAGE=agent-fleet/workspace:test
IMAGE="$ADDR/fleet/workspace:test"

log() { echo "registry.sh: $*" >&2; }
die() { log "$*"; exit 1; }

print_env() {
    cat <<EOF
export FLEET_TEST_REGISTRY=$ADDR
export FLEET_TEST_REGISTRY_USER=$USER_NAME
export FLEET_TEST_REGISTRY_PASSWORD=$PASSWORD
export FLEET_TEST_REGISTRY_LOG=$LOG_FILE
export FLEET_TEST_REGISTRY_PUSH_CONFIG=$PUSH_CONFIG
EOF
}

# The HTTP status of /v2/ ("401" when our registry answers), or nothing.
status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$ADDR/v2/" 2>/dev/null || true
}

install() {
    command -v docker-registry >/dev/null && command -v htpasswd >/dev/null && return
    [ "$(id -u)" = 0 ] || die "docker-registry and htpasswd are needed: apt-get install docker-registry apache2-utils"
    export DEBIAN_FRONTEND=noninteractive
    apt-cache show docker-registry >/dev/null 2>&1 || apt-get update >&2
    # policy-rc.d keeps the package's own service (on :5000) from being started.
    local policy=/usr/sbin/policy-rc.d made=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made=1; fi
    apt-get install -y --no-install-recommends docker-registry apache2-utils >&2 || { [ $made = 1 ] && rm -f "$policy"; die "apt-get install failed"; }
    [ $made = 1 ] && rm -f "$policy"
    command -v docker-registry >/dev/null || die "docker-registry is still missing"
}

up() {
    install
    mkdir -p "$STATE_DIR/data" "$PUSH_CONFIG"
    local code
    code=$(status)
    if [ -z "$code" ] || [ "$code" = 000 ]; then
        htpasswd -Bbn "$USER_NAME" "$PASSWORD" >"$STATE_DIR/htpasswd"
        cat >"$STATE_DIR/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $STATE_DIR/data
  delete:
    enabled: true
http:
  addr: $ADDR
auth:
  htpasswd:
    realm: fleet-test
    path: $STATE_DIR/htpasswd
EOF
        log "starting docker-registry on $ADDR"
        nohup docker-registry serve "$STATE_DIR/config.yml" >>"$LOG_FILE" 2>&1 &
        echo $! >"$PID_FILE"
        for _ in $(seq 1 50); do
            code=$(status)
            [ "$code" = 401 ] && break
            sleep 0.2
        done
    fi
    [ "$code" = 401 ] || die "something answers on $ADDR but not as our registry (HTTP $code)"
    docker image inspect "$SOURCE_IMAGE" >/dev/null 2>&1 || die "$SOURCE_IMAGE is missing: run scripts/build-images.sh"
    echo "$PASSWORD" | docker --config "$PUSH_CONFIG" login -u "$USER_NAME" --password-stdin "$ADDR" >/dev/null 2>&1 \
        || die "docker login $ADDR failed"
    docker tag "$SOURCE_IMAGE" "$IMAGE"
    docker --config "$PUSH_CONFIG" push "$IMAGE" >/dev/null || die "docker push $IMAGE failed"
    # Only the registry has it now: a test that runs it must pull it.
    docker rmi "$IMAGE" >/dev/null
    log "ready: $IMAGE (user $USER_NAME)"
    print_env
}

down() {
    [ -f "$PID_FILE" ] || { log "not started by us"; return 0; }
    local pid
    pid=$(cat "$PID_FILE")
    if kill -0 "$pid" 2>/dev/null && grep -q docker-registry "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid"
    fi
    rm -f "$PID_FILE"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    env) print_env ;;
    *) die "usage: $0 [up|down|env]" ;;
esac

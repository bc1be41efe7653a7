#!/usr/bin/env bash
# A local RabbitMQ for the integration tests and the quickstart, on 127.0.0.1:5672,
# without systemd. Idempotent; run as root on Debian.
#
#   rabbitmq.sh [start]  install when missing, configure, start unless it already
#                        answers, wait until ready, print the URL
#   rabbitmq.sh stop     stop the node (the whole Erlang VM)
#   rabbitmq.sh restart  drop every client connection and come back on the same
#                        port: stop_app + start_app (durable queues and persistent
#                        messages survive; exclusive queues do not) — the
#                        "broker restart" drill of the reconnect tests
#   rabbitmq.sh status   exit 0 iff the broker answers
#   rabbitmq.sh url      print the URL
#
# Configuration (/etc/rabbitmq/rabbitmq.conf, rewritten when it differs): AMQP on
# loopback only, and a delivery-ack timeout (consumer_timeout) long enough for
# agent jobs — the worker's heartbeat lease, not the broker, decides when a job is
# abandoned. Erlang distribution and epmd are bound to loopback as well.
set -euo pipefail

URL='amqp://guest:guest@127.0.0.1:5672/%2f'
HOST=127.0.0.1
PORT=5672
WAIT_SECS=${RABBITMQ_WAIT_SECS:-60}
CONF=/etc/rabbitmq/rabbitmq.conf
# 24 hours, in milliseconds: longer than any job's timeout.
CONSUMER_TIMEOUT_MS=86400000

# Read by every rabbitmq command this script runs (and by the epmd they start).
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'

log() { echo "rabbitmq: $*" >&2; }

answers() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null
}

installed() {
    command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null 2>&1
}

install() {
    if installed; then
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        log "rabbitmq-server is missing: run as root or 'apt-get install rabbitmq-server'"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show rabbitmq-server >/dev/null 2>&1; then
        apt-get update -q
    fi
    log "installing rabbitmq-server"
    apt-get install -y -q rabbitmq-server >/dev/null
}

desired_conf() {
    cat <<EOF
# Written by scripts/services/rabbitmq.sh; rewritten when it differs.
listeners.tcp.default = $HOST:$PORT
consumer_timeout = $CONSUMER_TIMEOUT_MS
EOF
}

# Prints "changed" when the file was (re)written.
configure() {
    mkdir -p "$(dirname "$CONF")"
    if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$(desired_conf)" ]; then
        return
    fi
    desired_conf >"$CONF"
    chmod 644 "$CONF"
    echo changed
}

wait_ready() {
    local deadline=$((SECONDS + WAIT_SECS))
    until answers; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "not answering on $HOST:$PORT after ${WAIT_SECS}s; see /var/log/rabbitmq/"
            exit 1
        fi
        sleep 1
    done
    # The listener opens late in boot; await_startup covers the rest.
    local left=$((deadline - SECONDS))
    [ "$left" -gt 0 ] || left=1
    if ! rabbitmqctl -q --timeout "$left" await_startup >/dev/null; then
        log "node did not finish booting within ${WAIT_SECS}s"
        exit 1
    fi
}

stop_node() {
    if ! installed; then
        return
    fi
    if rabbitmqctl -q --timeout 10 ping >/dev/null 2>&1 || answers; then
        log "stopping"
        # shutdown waits until the VM has exited.
        rabbitmqctl -q shutdown >/dev/null 2>&1 || rabbitmqctl -q stop >/dev/null 2>&1 || true
    fi
    local deadline=$((SECONDS + WAIT_SECS))
    while answers; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "still answering on $HOST:$PORT after ${WAIT_SECS}s"
            exit 1
        fi
        sleep 1
    done
}

start_node() {
    install
    local changed
    changed=$(configure)
    if answers; then
        if [ -n "$changed" ]; then
            log "configuration changed; restarting the node"
            stop_node
        else
            wait_ready
            echo "$URL"
            return
        fi
    fi
    # A node whose app was stopped (stop_app) keeps its VM: start the app only.
    if rabbitmqctl -q --timeout 10 ping >/dev/null 2>&1; then
        log "starting the app"
        rabbitmqctl -q start_app >/dev/null
    else
        log "starting"
        rabbitmq-server -detached
    fi
    wait_ready
    echo "$URL"
}

restart_app() {
    if ! answers; then
        start_node
        return
    fi
    log "restarting the app (every client connection is dropped)"
    rabbitmqctl -q stop_app >/dev/null
    rabbitmqctl -q start_app >/dev/null
    wait_ready
    echo "$URL"
}

case "${1:-start}" in
    start) start_node ;;
    stop) stop_node ;;
    restart) restart_app ;;
    status) answers ;;
    url) echo "$URL" ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
    *)
        log "unknown command: $1 (start|stop|restart|status|url)"
        exit 2
        ;;
esac

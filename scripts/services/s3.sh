#!/usr/bin/env bash
# An S3 API for the tests and fault drills: moto's server on 127.0.0.1 with the
# bucket `fleet-test`.
#
#   s3.sh [up]    install moto[server] (pinned, in a venv under the user's cache
#                 dir) when missing, start it unless something already answers on
#                 the port, wait until ready, create the bucket, print the
#                 environment to use (eval-able `export` lines on stdout)
#   s3.sh stop    take the endpoint down and keep its state: SIGSTOP the server we
#                 started (by its saved PID). Connections still open at the kernel
#                 level but nothing answers, so clients see timeouts.
#   s3.sh start   bring it back: SIGCONT a stopped server; `up` when none is running
#   s3.sh down    terminate the server we started (by its saved PID)
#   s3.sh status  print running | stopped | not-running | foreign (answers, not ours)
#   s3.sh env     print the environment to use
#
# Why SIGSTOP for an outage drill: moto keeps everything in memory, so killing and
# restarting it loses the bucket and every object; freezing the process keeps the
# state and the port, and thawing it answers the requests queued meanwhile.
#
# Environment: FLEET_TEST_S3_PORT (default 9000), FLEET_TEST_S3_BUCKET (default
# fleet-test). Idempotent; needs python3 with pip and PyPI. Never kills anything it
# did not start.
set -euo pipefail

# 5.1.x: 5.2.0-5.2.5 answer CompleteMultipartUpload with <CompleteMultipartUploadResponse>.
MOTO_VERSION=5.1.22
HOST=127.0.0.1
PORT=${FLEET_TEST_S3_PORT:-9000}
BUCKET=${FLEET_TEST_S3_BUCKET:-fleet-test}
ENDPOINT="http://$HOST:$PORT"
STATE_DIR="${TMPDIR:-/tmp}/agent-fleet-s3-$PORT"
PID_FILE="$STATE_DIR/moto.pid"
LOG_FILE="$STATE_DIR/moto.log"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/agent-fleet/moto-$MOTO_VERSION"

# moto's server (`moto_server`) as one thread: moto checks If-Match/If-None-Match and
# then writes without a lock, so on its default threaded server two conditional
# writes can both pass (a lost update in about 1 of 100 runs of the CAS test). S3
# itself is atomic; serving one request at a time makes moto so too.
SERVE='
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False)
'

log() { echo "s3.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# The Python interpreter of our venv with the pinned moto, installing it when
# needed. A venv of our own: the pin must win over any moto already installed
# (5.2.x answers CompleteMultipartUpload with a root element the Rust SDK rejects),
# and a Debian system Python refuses pip. It sees the system's site-packages, so
# dependencies already there (boto3, flask, ...) are not downloaded again.
moto_python() {
    local py="$VENV/bin/python"
    if [ -x "$py" ] && "$py" -c "import moto.server, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
        echo "$py"; return
    fi
    command -v python3 >/dev/null || die "python3 is required"
    log "installing moto[server]==$MOTO_VERSION into $VENV"
    mkdir -p "$(dirname "$VENV")"
    # --without-pip: Debian's python3 lacks ensurepip unless python3-venv is installed;
    # the system pip installs into the venv instead (pip >= 22.3).
    [ -x "$py" ] || python3 -m venv --system-site-packages --without-pip "$VENV" >&2 || die "python3 -m venv failed"
    python3 -m pip --python "$py" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2 \
        || die "pip install moto[server]==$MOTO_VERSION failed"
    "$py" -c 'import moto.server' || die "moto is not importable after the install"
    echo "$py"
}

# True when anything answers HTTP on the port (any status code).
answers() {
    python3 - "$ENDPOINT" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1] + "/", timeout=2)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
EOF
}

# The PID we saved, if that process is alive and is a moto server.
our_pid() {
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid=$(cat "$PID_FILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "moto" || return 1
    echo "$pid"
}

# "T" when the process is stopped (SIGSTOP), else its state letter.
proc_state() {
    awk '{print $3}' "/proc/$1/stat" 2>/dev/null
}

create_bucket() {
    local py=$1
    "$py" - "$ENDPOINT" "$BUCKET" <<'EOF'
import sys, boto3
endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
except s3.exceptions.BucketAlreadyExists:
    pass
EOF
}

print_env() {
    cat <<EOF
export FLEET_S3_ENDPOINT=$ENDPOINT
export FLEET_TEST_S3_ENDPOINT=$ENDPOINT
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
EOF
}

up() {
    local py pid
    py=$(moto_python)
    if pid=$(our_pid) && [ "$(proc_state "$pid")" = T ]; then
        log "resuming the stopped server (pid $pid)"
        kill -CONT "$pid"
    fi
    if answers; then
        log "an S3 endpoint already answers at $ENDPOINT"
    else
        mkdir -p "$STATE_DIR"
        log "starting moto on $ENDPOINT (log: $LOG_FILE)"
        # Its own session: the server outlives this script and the caller's process group.
        setsid "$py" -c "$SERVE" "$HOST" "$PORT" >"$LOG_FILE" 2>&1 </dev/null &
        echo $! >"$PID_FILE"
        local deadline=$((SECONDS + 60))
        until answers; do
            if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
                tail -n 20 "$LOG_FILE" >&2 || true
                die "moto exited during start-up"
            fi
            [ "$SECONDS" -lt "$deadline" ] || die "moto did not answer within 60 s (log: $LOG_FILE)"
            sleep 0.3
        done
    fi
    create_bucket "$py"
    log "bucket $BUCKET ready at $ENDPOINT"
    print_env
}

stop() {
    local pid
    pid=$(our_pid) || die "no server started by this script on port $PORT"
    kill -STOP "$pid"
    log "stopped (SIGSTOP) pid $pid: $ENDPOINT does not answer until 's3.sh start'"
}

start() {
    local pid
    if pid=$(our_pid); then
        kill -CONT "$pid"
        log "resumed (SIGCONT) pid $pid"
        local deadline=$((SECONDS + 15))
        until answers; do
            [ "$SECONDS" -lt "$deadline" ] || die "moto did not answer within 15 s after SIGCONT"
            sleep 0.2
        done
    else
        up >/dev/null
    fi
}

down() {
    local pid
    if ! pid=$(our_pid); then
        log "no server started by this script on port $PORT"
        rm -f "$PID_FILE"
        return 0
    fi
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$PID_FILE" "$LOG_FILE"
    rmdir "$STATE_DIR" 2>/dev/null || true
    log "terminated pid $pid"
}

status() {
    local pid
    if pid=$(our_pid); then
        if [ "$(proc_state "$pid")" = T ]; then echo stopped; else echo running; fi
    elif answers; then
        echo foreign
    else
        echo not-running
    fi
}

case "${1:-up}" in
    up) up ;;
    stop) stop ;;
    start) start ;;
    down) down ;;
    status) status ;;
    env) print_env ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command: $1 (up|stop|start|down|status|env)" ;;
esac

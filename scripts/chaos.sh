#!/usr/bin/env bash
# Fault drills against the real thing: RabbitMQ, an S3 server (moto), Docker and
# `fleet worker` processes, with the scripted LLM (`fleet mock-llm`, scripts in
# chaos/llm/). Each drill breaks one thing while jobs run and then checks that
#
#   - no job is lost: every job submitted reaches a terminal state with result.json;
#   - none runs twice: its status history has one terminal transition, and as many
#     `running` transitions as the drill explains (one per attempt that started);
#   - no workspace container is left (label agent-fleet=1, the drill's job ids);
#   - the worker still serves: it runs one more normal job afterwards (unless the
#     drill ends it on purpose, and then another worker does).
#
# The ownership drills (pause-worker, poison, garbage-dup, submit-broker-down,
# stale-delivery, two-local-workers) also count runs with an observer the
# workers do not write: the scripted LLM's own request log (`fleet mock-llm
# --request-log`, one line per request, naming the conversation's task), and for
# two-local-workers a ledger file outside the workspaces that each run appends to.
# A broker disconnect is one connection closed with `rabbitmqctl
# close_connection`, never a broker restart.
#
# Each drill prints one line, `PASS name` or `FAIL name: why`; the last line is
# `N passed, N failed`, and the exit status is 1 if any failed. Progress goes to
# stderr.
#
#   scripts/chaos.sh                 every drill (about 10 minutes)
#   scripts/chaos.sh --quick         the quick ones, under a minute each (CI)
#   scripts/chaos.sh --only NAME...  the named drills
#   scripts/chaos.sh --list          the drills, quick ones marked
#   scripts/chaos.sh --keep          keep the work directory (logs, stores)
#
# Needs root on Debian with Docker running, python3 and PyPI (pika, and moto for
# the S3 drill, each in a venv under the user's cache directory). Starts what it
# needs through scripts/services/ (idempotent) and builds `fleet` with
# `cargo build --release --bin fleet` unless FLEET_BIN names a binary. Every
# drill has its own queue prefix (FLEET_QUEUE_PREFIX), store and workers; the
# S3 drill has its own moto on FLEET_CHAOS_S3_PORT (default 9107). Every process
# and container it starts is stopped, by PID or id, on every path out.
#
# The broker-restart drill restarts the shared local RabbitMQ (stop_app +
# start_app): other clients of that broker see their connections drop.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1

ALL=(kill-9 sigterm oom fork-storm hostile-messages hostile-valid-jobs webhook-down docker-down
     broker-restart s3-down output-flood
     pause-worker poison garbage-dup submit-broker-down stale-delivery two-local-workers)
QUICK=(kill-9 sigterm oom fork-storm hostile-messages hostile-valid-jobs webhook-down docker-down
       pause-worker poison garbage-dup submit-broker-down stale-delivery two-local-workers)
IMAGE=agent-fleet/workspace:test
PIKA_VERSION=1.3.2
S3_PORT=${FLEET_CHAOS_S3_PORT:-9107}
S3_BUCKET=fleet-test

say() { echo "chaos: $*" >&2; }

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

selected=()
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) selected=("${QUICK[@]}") ;;
        --only)
            shift
            while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do selected+=("$1"); shift; done
            continue
            ;;
        --keep) keep=1 ;;
        --list)
            for d in "${ALL[@]}"; do
                case " ${QUICK[*]} " in *" $d "*) echo "$d (quick)" ;; *) echo "$d" ;; esac
            done
            exit 0
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ ${#selected[@]} -gt 0 ] || selected=("${ALL[@]}")
for d in "${selected[@]}"; do
    case " ${ALL[*]} " in
        *" $d "*) ;;
        *) echo "chaos.sh: no drill named $d (one of: ${ALL[*]})" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------------------
# Processes, containers and queues this run owns, and their cleanup.

RUN=$(printf '%04x%02x' $((RANDOM)) $((RANDOM % 256)))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fleet-chaos-$RUN.XXXXXX")
GLOBAL_PIDS=()    # the scripted LLM
DRILL_PIDS=()     # workers, receivers, proxies of the current drill
WORKER_PIDS=()    # every worker ever started (their containers are ours)
PREFIXES=()       # queue prefixes used
S3_STARTED=0
BROKER_TOUCHED=0
passed=0
failed=0

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Stops one process we started: SIGTERM (twice: a worker drains on the first and
# requeues on the second), then SIGKILL.
stop_pid() {
    local pid=$1 i
    alive "$pid" || { wait "$pid" 2>/dev/null; return 0; }
    kill -CONT "$pid" 2>/dev/null
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for i in $(seq 50); do alive "$pid" || break; sleep 0.2; done
    fi
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# Containers of this run: its job ids start with c$RUN-, and any container owned
# by one of its workers (hostile messages get generated ids).
our_containers() {
    docker ps -aq --filter label=agent-fleet=1 \
        --format '{{.ID}} {{.Label "fleet.job_id"}} {{.Label "fleet.pid"}}' 2>/dev/null |
        while read -r id job pid; do
            if [ "${job#c"$RUN"-}" != "$job" ]; then echo "$id"; continue; fi
            for p in "${WORKER_PIDS[@]}"; do [ "$pid" = "$p" ] && echo "$id" && break; done
        done
}

remove_containers() {
    local ids
    ids=$(our_containers)
    [ -n "$ids" ] || return 0
    say "removing containers left behind: $(echo $ids)"
    # shellcheck disable=SC2086
    docker rm -f $ids >/dev/null 2>&1 || true
}

delete_queues() {
    local prefix=$1 names
    [ -n "$prefix" ] || return 0
    names=$(rabbitmqctl -q list_queues name --no-table-headers 2>/dev/null |
        awk -v p="$prefix" 'index($1, p) == 1 { print substr($1, length(p) + 1) }')
    # shellcheck disable=SC2086
    "$PIKA_PY" "$REPO/chaos/lib/amqp.py" delete "$prefix" $names >/dev/null 2>&1 || true
}

drill_cleanup() {
    local pid
    for pid in "${DRILL_PIDS[@]}"; do stop_pid "$pid"; done
    DRILL_PIDS=()
    remove_containers
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    drill_cleanup
    local pid p
    for pid in "${GLOBAL_PIDS[@]}"; do stop_pid "$pid"; done
    if [ "$BROKER_TOUCHED" = 1 ] && ! bash scripts/services/rabbitmq.sh status; then
        bash scripts/services/rabbitmq.sh start >/dev/null 2>&1 || true
    fi
    if [ -n "${PIKA_PY:-}" ]; then
        for p in "${PREFIXES[@]}"; do delete_queues "$p"; done
    fi
    if [ "$S3_STARTED" = 1 ]; then
        FLEET_TEST_S3_PORT=$S3_PORT bash scripts/services/s3.sh down >/dev/null 2>&1 || true
    fi
    if [ "$keep" = 1 ] || [ "$failed" -gt 0 ]; then
        say "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Set-up: services, image, binary, pika, the scripted LLM.

setup_fail() {
    echo "FAIL setup: $*"
    echo "0 passed, ${#selected[@]} failed"
    failed=${#selected[@]}
    exit 1
}

pika_python() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/agent-fleet/pika-$PIKA_VERSION"
    local py="$venv/bin/python"
    if [ -x "$py" ] && "$py" -c "import pika, sys; sys.exit(pika.__version__ != '$PIKA_VERSION')" 2>/dev/null; then
        echo "$py"; return 0
    fi
    say "installing pika==$PIKA_VERSION into $venv"
    mkdir -p "$(dirname "$venv")"
    [ -x "$py" ] || python3 -m venv --without-pip "$venv" >&2 || return 1
    python3 -m pip --python "$py" install --quiet --disable-pip-version-check "pika==$PIKA_VERSION" >&2 || return 1
    echo "$py"
}

docker info >/dev/null 2>&1 || setup_fail "Docker is not reachable (docker info failed)"
command -v python3 >/dev/null || setup_fail "python3 is required"
say "starting RabbitMQ (scripts/services/rabbitmq.sh)"
bash scripts/services/rabbitmq.sh start >/dev/null || setup_fail "RabbitMQ did not start"
say "building the workspace image (scripts/build-images.sh)"
sh scripts/build-images.sh >/dev/null || setup_fail "scripts/build-images.sh failed"
if [ -n "${FLEET_BIN:-}" ]; then
    FLEET=$FLEET_BIN
else
    say "building fleet (cargo build --release --bin fleet)"
    cargo build --release --bin fleet >&2 || setup_fail "cargo build failed"
    FLEET="$REPO/target/release/fleet"
fi
[ -x "$FLEET" ] || setup_fail "no fleet binary at $FLEET"
PIKA_PY=$(pika_python) || setup_fail "could not install pika (PyPI)"

LLM_LOG="$WORK/llm-requests.jsonl"
"$FLEET" mock-llm --scripts "$REPO/chaos/llm" --addr 127.0.0.1:0 --request-log "$LLM_LOG" >"$WORK/mock-llm.out" 2>"$WORK/mock-llm.log" &
GLOBAL_PIDS+=($!)
for _ in $(seq 100); do
    LLM_URL=$(grep -m1 -o 'http://[^ ]*' "$WORK/mock-llm.out" 2>/dev/null)
    [ -n "$LLM_URL" ] && break
    sleep 0.1
done
[ -n "${LLM_URL:-}" ] || setup_fail "fleet mock-llm did not print its URL"
say "scripted LLM at $LLM_URL; work directory $WORK; run $RUN"

# ---------------------------------------------------------------------------
# Drill helpers. A drill runs in this shell with D (its directory), P (its queue
# prefix), S (its store) and FE (the environment of every fleet command).

REASON=""
fail() { REASON="$*"; return 1; }

# drill_env NAME [VAR=VALUE...]: a fresh directory, queue prefix and store.
drill_env() {
    local name=$1; shift
    D="$WORK/$name"
    mkdir -p "$D/views"
    P="chaos-$RUN-$name."
    PREFIXES+=("$P")
    S=${S_OVERRIDE:-$D/store}
    FE=(FLEET_QUEUE_PREFIX="$P" FLEET_STORE="$S" LLM_BASE_URL="$LLM_URL"
        FLEET_LLM_RETRY_MIN_SECS=0.2 FLEET_DEFAULT_IMAGE="$IMAGE"
        RUST_LOG="${RUST_LOG:-info}" "$@")
}

fleet() { env "${FE[@]}" "$FLEET" "$@"; }

# job ID MODEL [EXTRA_FIELDS]: one job's JSON.
job() {
    printf '{"id": "%s", "task": "chaos drill job %s", "llm": {"model": "%s"}%s}' \
        "$1" "$1" "$2" "${3:+, $3}"
}

# write_jobs FILE JOB_JSON...: writes a job file.
write_jobs() {
    local file=$1; shift
    local IFS=,
    printf '{"defaults": {"image": "%s", "limits": {"timeout_secs": 600, "command_timeout_secs": 60, "memory_mb": 256, "max_iterations": 40}},\n "jobs": [%s]}\n' \
        "$IMAGE" "$*" >"$file"
}

# submit FILE JOB_JSON...: writes a job file and submits it.
submit() {
    local file=$1; shift
    write_jobs "$file" "$@"
    fleet submit "$file" >"$file.ids" 2>>"$D/submit.log" || fail "fleet submit $file failed: $(tail -n1 "$D/submit.log")"
}

# start_worker NAME [VAR=VALUE...] [-- WORKER_FLAGS...]: a worker with the drill's
# environment; waits until it serves. Sets WPID[NAME] and WID[NAME].
declare -A WPID WID
start_worker() {
    local name=$1; shift
    local extra_env=() flags=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do extra_env+=("$1"); shift; done
    [ "${1:-}" = "--" ] && { shift; flags=("$@"); }
    local log="$D/worker-$name.log"
    case " ${flags[*]} " in *" --concurrency "*) ;; *) flags+=(--concurrency 1) ;; esac
    env "${FE[@]}" "${extra_env[@]}" "$FLEET" worker --metrics-addr 127.0.0.1:0 \
        "${flags[@]}" >"$log" 2>&1 &
    local pid=$!
    DRILL_PIDS+=("$pid")
    WORKER_PIDS+=("$pid")
    WPID[$name]=$pid
    local i id=""
    for i in $(seq 150); do
        id=$(sed -n 's/^fleet worker \([^ ]*\): .* slots.*/\1/p' "$log" | head -n1)
        [ -n "$id" ] && break
        alive "$pid" || break
        sleep 0.2
    done
    if [ -z "$id" ]; then
        fail "worker $name did not start: $(grep -v '^ *$' "$log" | tail -n1)"
        return 1
    fi
    WID[$name]=$id
    say "worker $name started (pid $pid, $id)"
}

# view ID...: `fleet status ID --json` into $D/views/ID.json (empty when unknown).
view() {
    local id
    for id in "$@"; do fleet status "$id" --json >"$D/views/$id.json" 2>/dev/null; done
}

check() { python3 "$REPO/chaos/lib/check.py" "$@"; }

# state ID: the job's state, "-" when it has none.
state() {
    view "$1"
    python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1]))["status"]["state"])
except Exception: print("-")' "$D/views/$1.json"
}

is_terminal() {
    case "$(state "$1")" in
        succeeded | failed | stuck | max_iterations | timed_out | budget_exceeded | cancelled | rejected) return 0 ;;
        *) return 1 ;;
    esac
}

# wait_terminal TIMEOUT ID...: until every job is terminal.
wait_terminal() {
    local timeout=$1; shift
    local deadline=$((SECONDS + timeout)) id pending
    while :; do
        pending=()
        for id in "$@"; do is_terminal "$id" || pending+=("$id"); done
        [ ${#pending[@]} -eq 0 ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "not terminal after ${timeout}s: $(for id in "${pending[@]}"; do printf '%s=%s ' "$id" "$(state "$id")"; done)"
            return 1
        fi
        sleep 1
    done
}

# wait_for TIMEOUT WHAT COMMAND...: until COMMAND succeeds.
wait_for() {
    local timeout=$1 what=$2; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || { fail "timed out after ${timeout}s waiting for $what"; return 1; }
        sleep 0.5
    done
}

containers_of() {
    docker ps -aq --filter label=agent-fleet=1 --filter "label=fleet.job_id=$1" 2>/dev/null
}

gone() { [ -z "$(docker ps -aq --filter "id=$1" 2>/dev/null)" ]; }

running_with_container() {
    [ "$(state "$1")" = running ] && [ -n "$(containers_of "$1")" ]
}

# no_containers ID...: none of the jobs has a container (a few seconds of grace).
no_containers() {
    local id left i
    for i in $(seq 10); do
        left=""
        for id in "$@"; do [ -z "$(containers_of "$id")" ] || left="$left $id"; done
        [ -z "$left" ] && return 0
        sleep 0.5
    done
    fail "containers left for:$left"
}

# jobs_ok CHECK_ARGS... ID...: check.py jobs over fresh views.
jobs_ok() {
    local ids=() a skip=0
    for a in "$@"; do
        if [ "$skip" = 1 ]; then skip=0; continue; fi
        case "$a" in --*) skip=1 ;; *) ids+=("$a") ;; esac
    done
    view "${ids[@]}"
    local out
    out=$(check jobs "$D/views" "$@") || { fail "$out"; return 1; }
    say "  $out"
}

# still_serving TAG [WORKER_NAME...]: one more normal job, done by one of them.
still_serving() {
    local tag=$1; shift
    local id="c$RUN-$tag-after"
    submit "$D/after.json" "$(job "$id" chaos-quick)" || return 1
    wait_terminal 90 "$id" || return 1
    jobs_ok --outcome succeeded --running 1 "$id" || return 1
    if [ $# -gt 0 ]; then
        local w ok=0 ran
        ran=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"].get("worker",""))' "$D/views/$id.json")
        for w in "$@"; do [ "$ran" = "${WID[$w]:-}" ] && ok=1; done
        [ "$ok" = 1 ] || { fail "the job after the drill ran on $ran, not on $*"; return 1; }
    fi
    local w
    for w in "$@"; do alive "${WPID[$w]}" || { fail "worker $w is gone"; return 1; }; done
    say "  still serving: $id succeeded"
}

# The worker's peak resident memory in MiB.
vmhwm_mib() { awk '/^VmHWM:/ { printf "%d", $2 / 1024 }' "/proc/$1/status" 2>/dev/null; }

no_panic() {
    local f
    for f in "$D"/worker-*.log; do
        if grep -q "panicked" "$f"; then
            fail "$(basename "$f"): $(grep -m1 panicked "$f")"
            return 1
        fi
    done
}

# fleet status --fleet --json into FILE
fleet_view() { fleet status --fleet --json >"$1" 2>"$1.err"; }

dead_count_is() {
    fleet_view "$D/fleet.json" && check dead "$D/fleet.json" "$P" "$1" >/dev/null
}

# ---------------------------------------------------------------------------
# The drills. Each returns 0 (pass) or 1 with REASON set.

# kill -9 a worker mid-job: the broker redelivers when its connection drops;
# another worker defers until the dead worker's lease runs out, then takes the
# job over as attempt 2, removes the dead worker's container, and finishes the
# job once.
drill_kill_9() {
    drill_env kill-9 FLEET_LEASE_SECS=6 FLEET_RETRY_TIERS_SECS=1,3
    local j="c$RUN-k9-1"
    start_worker a || return
    submit "$D/jobs.json" "$(job "$j" chaos-slow)" || return
    wait_for 60 "$j running in a container" running_with_container "$j" || return
    start_worker b || return
    sleep 3
    local orphan
    orphan=$(containers_of "$j")
    say "  kill -9 worker a (pid ${WPID[a]}) while $j runs in container $orphan"
    kill -KILL "${WPID[a]}"
    wait "${WPID[a]}" 2>/dev/null
    wait_terminal 120 "$j" || return
    jobs_ok --outcome succeeded --running 2 --attempt 2 "$j" || return
    local second
    second=$(python3 -c 'import json,sys
h=[t for t in json.load(open(sys.argv[1]))["status"]["history"] if t["state"]=="running"]
print(h[1].get("worker",""), "|", h[1].get("note",""))' "$D/views/$j.json")
    case "$second" in
        "${WID[b]} | taken over"*) ;;
        *) fail "the second run was not worker b taking over: $second"; return 1 ;;
    esac
    # The dead worker's container: removed by the worker that took the job over.
    wait_for 20 "the dead worker's container $orphan to be removed" gone "$orphan" || return
    no_containers "$j" || return
    still_serving k9 b || return
    no_panic
}

# SIGTERM with running jobs: the worker stops taking jobs; a job that can finish
# within --grace-secs does; one that cannot is stopped, its container removed and
# its message requeued, and another worker runs it. A job still queued stays queued.
drill_sigterm() {
    drill_env sigterm FLEET_LEASE_SECS=10 FLEET_RETRY_TIERS_SECS=1,3
    local short="c$RUN-st-short" long="c$RUN-st-long" queued="c$RUN-st-queued"
    start_worker a -- --concurrency 2 --grace-secs 15 || return
    submit "$D/jobs.json" "$(job "$short" chaos-short)" "$(job "$long" chaos-long)" || return
    wait_for 60 "both jobs running" eval 'running_with_container "$short" && running_with_container "$long"' || return
    submit "$D/queued.json" "$(job "$queued" chaos-quick)" || return
    sleep 1
    say "  SIGTERM worker a (grace 15 s) with $short and $long running, $queued queued"
    local t0=$SECONDS
    kill -TERM "${WPID[a]}"
    local i
    for i in $(seq 120); do alive "${WPID[a]}" || break; sleep 0.5; done
    if alive "${WPID[a]}"; then fail "worker a still running $((SECONDS - t0))s after SIGTERM"; return 1; fi
    wait "${WPID[a]}"
    local rc=$? took=$((SECONDS - t0))
    [ "$rc" = 0 ] || { fail "worker a exited with $rc after SIGTERM"; return 1; }
    [ "$took" -le 35 ] || { fail "worker a took ${took}s to drain (grace 15 s)"; return 1; }
    say "  worker a drained and exited in ${took}s"
    jobs_ok --outcome succeeded --running 1 "$short" || return
    [ "$(state "$long")" = queued ] || { fail "$long is $(state "$long") after the drain, not queued"; return 1; }
    [ "$(state "$queued")" = queued ] || { fail "$queued is $(state "$queued") after the drain, not queued"; return 1; }
    no_containers "$short" "$long" || return
    start_worker b || return
    wait_terminal 120 "$long" "$queued" || return
    jobs_ok --outcome succeeded --running 2 "$long" || return
    jobs_ok --outcome succeeded --running 1 "$queued" || return
    no_containers "$short" "$long" "$queued" || return
    still_serving st b || return
    no_panic
}

# A container OOM-killed: limits.memory_mb 16 and a pipeline that buffers 500 MB.
# The kernel kills the allocating process inside the container; the agent sees
# the exit status and goes on; the worker is untouched.
drill_oom() {
    drill_env oom
    local j="c$RUN-oom-1"
    start_worker a || return
    # The kernel may take half a minute to give up reclaiming (the container's
    # own binaries are evicted and read back first), so the allocation's call
    # waits up to 85 s for it (chaos/llm/chaos-oom.json), within a 90 s ceiling.
    submit "$D/jobs.json" "$(job "$j" chaos-oom '"limits": {"memory_mb": 16, "command_timeout_secs": 90}')" || return
    # The kernel's count of OOM kills in the container's memory cgroup, read
    # while the container lives (the job's second command gives it 2 s).
    local deadline=$((SECONDS + 150)) cid="" full="" kills=0 k
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ -z "$cid" ]; then
            cid=$(containers_of "$j" | head -n1)
            [ -n "$cid" ] && full=$(docker inspect --format '{{.Id}}' "$cid" 2>/dev/null)
        fi
        if [ -n "$full" ] && k=$(oom_kills_of "$full") && [ "$k" -gt "$kills" ]; then kills=$k; fi
        is_terminal "$j" && break
        sleep 0.3
    done
    wait_terminal 10 "$j" || return
    say "  OOM kills in the container's memory cgroup: $kills"
    [ "$kills" -gt 0 ] || { fail "the kernel OOM-killed nothing in the container (limit 16 MiB)"; return 1; }
    jobs_ok --outcome succeeded,failed --running 1 "$j" || return
    local obs
    obs=$(python3 -c 'import json,sys
o=[json.loads(l) for l in open(sys.argv[1])]
o=[e.get("content","") for e in o if e.get("kind")=="ObservationEvent" and e.get("tool_name")=="terminal"]
print("killed" if "pipeline exit 137" in o[0] else repr(o[0][:120]), "/",
      "went on" if "still here" in o[1] else repr(o[1][:120]))' "$S/jobs/$j/events.jsonl" 2>&1)
    say "  the allocation: $obs"
    [ "$obs" = "killed / went on" ] ||
        { fail "expected the allocation OOM-killed (exit 137) and the next command to run: $obs"; return 1; }
    no_containers "$j" || return
    still_serving oom a || return
    no_panic
}

# oom_kill of a container's memory cgroup (cgroup v1 memory.oom_control, v2 memory.events).
oom_kills_of() {
    local id=$1 dir
    for dir in /sys/fs/cgroup/memory/docker/"$id"* /sys/fs/cgroup/system.slice/docker-"$id"*.scope \
        /sys/fs/cgroup/docker/"$id"*; do
        if [ -r "$dir/memory.oom_control" ]; then
            awk '$1 == "oom_kill" { print $2; f = 1 } END { if (!f) print 0 }' "$dir/memory.oom_control"
            return 0
        elif [ -r "$dir/memory.events" ]; then
            awk '$1 == "oom_kill" { print $2; f = 1 } END { if (!f) print 0 }' "$dir/memory.events"
            return 0
        fi
    done
    return 1
}

# pids.current and pids.events "max" of a container (cgroup v1 or v2).
pids_of() {
    local id=$1 dir
    for dir in /sys/fs/cgroup/pids/docker/"$id"* /sys/fs/cgroup/system.slice/docker-"$id"*.scope \
        /sys/fs/cgroup/docker/"$id"*; do
        if [ -r "$dir/pids.current" ]; then
            echo "$(cat "$dir/pids.current") $(awk '$1 == "max" { print $2 }' "$dir/pids.events" 2>/dev/null)"
            return 0
        fi
    done
    return 1
}

# A fork storm: limits.pids 64 and a shell fork bomb. The pids limit holds (the
# container never has more than its limit, and the host is untouched), the
# command is killed at its timeout, the agent goes on, the workspace is removed.
# The bomb runs in the background (`f & exec sleep 1000`): the command's own
# shell forks once, before the storm. Had it called `f` itself, its next fork
# could meet the full limit, and ash exits on "can't fork" (status 2): the
# command would end in a second instead of timing out.
drill_fork_storm() {
    drill_env fork-storm
    local j="c$RUN-fs-1" limit=64
    start_worker a || return
    submit "$D/jobs.json" "$(job "$j" chaos-forkbomb "\"limits\": {\"pids\": $limit, \"command_timeout_secs\": 10}")" || return
    local deadline=$((SECONDS + 120)) peak=0 hits=0 cid="" full="" cur ev
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ -z "$cid" ]; then
            cid=$(containers_of "$j" | head -n1)
            [ -n "$cid" ] && full=$(docker inspect --format '{{.Id}}' "$cid" 2>/dev/null)
        fi
        if [ -n "$full" ] && read -r cur ev < <(pids_of "$full"); then
            [ "$cur" -gt "$peak" ] && peak=$cur
            [ -n "$ev" ] && [ "$ev" -gt "$hits" ] && hits=$ev
        fi
        is_terminal "$j" && break
        sleep 0.3
    done
    wait_terminal 10 "$j" || return
    say "  container pids: peak $peak (limit $limit, +16 lent to the kill), forks refused at the limit: $hits"
    [ -n "$full" ] || { fail "never saw the job's container"; return 1; }
    [ "$peak" -le $((limit + 16)) ] || { fail "pids peaked at $peak, over the limit $limit"; return 1; }
    [ "$hits" -gt 0 ] || [ "$peak" -ge "$limit" ] || { fail "the fork bomb never reached the pids limit (peak $peak)"; return 1; }
    jobs_ok --outcome succeeded --running 1 "$j" || return
    local obs
    obs=$(python3 -c 'import json,sys
o=[json.loads(l) for l in open(sys.argv[1])]
o=[e for e in o if e.get("kind")=="ObservationEvent" and e.get("tool_name")=="terminal"]
print(bool(o[0].get("timed_out")), "|", "survived" in o[1].get("content",""))' "$S/jobs/$j/events.jsonl" 2>&1)
    [ "$obs" = "True | True" ] || { fail "expected the storm to time out and the next command to run: $obs"; return 1; }
    no_containers "$j" || return
    still_serving fs a || return
    no_panic
}

# 1 GiB of output from one command: the observation is cut to 30,000 characters
# (head and tail) and the worker's peak RSS stays small.
drill_output_flood() {
    drill_env output-flood
    local j="c$RUN-of-1"
    start_worker a || return
    local before
    before=$(vmhwm_mib "${WPID[a]}")
    submit "$D/jobs.json" "$(job "$j" chaos-flood '"limits": {"command_timeout_secs": 900, "timeout_secs": 1200}')" || return
    local t0=$SECONDS
    wait_terminal 900 "$j" || return
    local peak
    peak=$(vmhwm_mib "${WPID[a]}")
    say "  1 GiB through the terminal in $((SECONDS - t0))s; worker peak RSS ${peak} MiB (${before} MiB at start)"
    jobs_ok --outcome succeeded --running 1 "$j" || return
    local out
    # The head of the output, the cut, and its tail (the last line printed).
    out=$(check observations "$S" "$j" 31000 "0123456789abcdef" "bytes of output were cut" "flood done") ||
        { fail "$out"; return 1; }
    say "  $out"
    [ "$peak" -lt 150 ] || { fail "worker peak RSS ${peak} MiB (limit 150 MiB)"; return 1; }
    no_containers "$j" || return
    still_serving of a || return
    no_panic
}

# 100 malformed or hostile messages straight to the broker (chaos/lib/amqp.py):
# every one is dead-lettered, the worker stays up, and nothing is written but
# rejection records under jobs/<valid message id>/.
drill_hostile_messages() {
    S_OVERRIDE="$WORK/hostile-messages/a/b/store" drill_env hostile-messages FLEET_RETRY_TIERS_SECS=1,3
    mkdir -p "$S"
    start_worker a -- --concurrency 4 || return
    local out
    out=$(FLEET_QUEUE="${FLEET_QUEUE:-}" "$PIKA_PY" "$REPO/chaos/lib/amqp.py" hostile "$P" "$IMAGE" 2>"$D/publish.log") ||
        { fail "publishing the hostile messages failed: $(tail -n1 "$D/publish.log")"; return 1; }
    local ids
    ids=$(python3 -c 'import json,sys; print(" ".join(json.loads(sys.argv[1])["valid_message_ids"]))' "$out")
    say "  published 100 hostile messages; valid message ids among them: $ids"
    wait_for 120 "100 messages in ${P}fleet.dead" dead_count_is 100 || {
        fail "$REASON; $(check dead "$D/fleet.json" "$P" 100)"
        return 1
    }
    say "  $(check dead "$D/fleet.json" "$P" 100)"
    alive "${WPID[a]}" || { fail "the worker died"; return 1; }
    local rejected=() id
    for id in $ids; do [ "$id" = chaos-nul-workdir ] || rejected+=("$id"); done
    jobs_ok --outcome rejected --running 0 "${rejected[@]}" || return
    # A NUL in the workdir passes the parser; Docker refuses it: failed after its
    # attempts (docker_error), or rejected once the parser catches it.
    jobs_ok --outcome failed,rejected --running-min 0 --running-max 3 chaos-nul-workdir || return
    # shellcheck disable=SC2086
    out=$(check tree "$S" $ids) || { fail "$out"; return 1; }
    say "  store: $out"
    local extra
    extra=$(find "$WORK/hostile-messages/a" -mindepth 1 -maxdepth 2 ! -path "$S" ! -path "$WORK/hostile-messages/a/b")
    [ -z "$extra" ] || { fail "written outside the store: $extra"; return 1; }
    [ ! -e /tmp/fleet-chaos-escape ] || { fail "/tmp/fleet-chaos-escape was written"; return 1; }
    [ -z "$(our_containers)" ] || { fail "a hostile message started a container"; return 1; }
    still_serving hm a || return
    no_panic
}

# Well-formed jobs that each try one escape from a default worker (no policy
# variables set): send the worker's AWS secret to a host of the job's choosing,
# take the broker URL or another worker variable as a secret, the host network,
# any Docker network, limits of any size, webhooks to loopback, another job's
# files as input. Each ends
# rejected/policy with a one-line message naming the field; no container is
# created for any; the receiver they point at gets nothing; no worker value is
# in any stored object, nor in the environment of a container the worker runs.
drill_hostile_valid_jobs() {
    HOOK_PORT=$(free_port)
    local token="hv-token-$RUN-$RANDOM$RANDOM" aws="hv-aws-$RUN-$RANDOM$RANDOM"
    local llm_key="hv-llm-$RUN-$RANDOM$RANDOM" broker=${FLEET_QUEUE:-amqp://guest:guest@127.0.0.1:5672/%2f}
    drill_env hostile-valid-jobs FLEET_QUEUE="$broker" HV_WORKER_TOKEN="$token" \
        AWS_SECRET_ACCESS_KEY="$aws" LLM_API_KEY="$llm_key"
    : >"$D/received.jsonl"
    start_receiver || return
    start_worker a -- --concurrency 4 || return
    fleet worker --print-policy >"$D/policy.txt" 2>&1 || { fail "fleet worker --print-policy failed"; return 1; }
    grep -q '^FLEET_JOB_SECRETS *(none)' "$D/policy.txt" || { fail "not a default policy: $(head -n1 "$D/policy.txt")"; return 1; }
    local rx="http://127.0.0.1:$HOOK_PORT" since
    since=$(date +%s)
    local names=(key-to-host worker-key-to-host aws-key broker-url worker-var host-net
                 bridge-net pids memory timeout webhook-loopback webhook-secret root-user
                 other-input)
    local fields=(
        "\"llm\": {\"model\": \"chaos-quick\", \"base_url\": \"$rx/v1\", \"api_key_env\": \"AWS_SECRET_ACCESS_KEY\"}"
        "\"llm\": {\"model\": \"chaos-quick\", \"base_url\": \"$rx/v1\"}"
        "\"llm\": {\"model\": \"chaos-quick\", \"api_key_env\": \"AWS_SECRET_ACCESS_KEY\"}"
        "\"secrets\": [\"FLEET_QUEUE\"]"
        "\"secrets\": [\"HV_WORKER_TOKEN\"]"
        "\"limits\": {\"network\": \"host\"}"
        "\"limits\": {\"network\": \"bridge\"}"
        "\"limits\": {\"pids\": 9223372036854775807}"
        "\"limits\": {\"memory_mb\": 100000000}"
        "\"limits\": {\"timeout_secs\": 100000000}"
        "\"webhook\": {\"url\": \"$rx/hook\"}"
        "\"webhook\": {\"url\": \"https://hooks.example.invalid/x\", \"secret_env\": \"HV_WORKER_TOKEN\"}"
        "\"limits\": {\"user\": \"root\"}"
        "\"input\": {\"store_key\": \"jobs/c$RUN-hv-valid/job.json\"}"
    )
    local jobs=() ids=() i id
    for i in "${!names[@]}"; do
        id="c$RUN-hv-${names[$i]}"
        ids+=("$id")
        # The job's own `llm` (when it has one) replaces the helper's.
        case "${fields[$i]}" in
            '"llm"'*) jobs+=("$(printf '{"id": "%s", "task": "escape %s", %s}' "$id" "${names[$i]}" "${fields[$i]}")") ;;
            *) jobs+=("$(job "$id" chaos-quick "${fields[$i]}")") ;;
        esac
    done
    # One valid job that runs, so a live container's environment can be read.
    local valid="c$RUN-hv-valid"
    jobs+=("$(job "$valid" chaos-slow)")
    submit "$D/jobs.json" "${jobs[@]}" || return
    wait_for 60 "the valid job's container" eval '[ -n "$(containers_of "$valid")" ]' || return
    local cid
    cid=$(containers_of "$valid" | head -n1)
    docker inspect --format '{{json .Config.Env}}' "$cid" >"$D/valid-env.json" 2>/dev/null ||
        { fail "docker inspect of the valid job's container failed"; return 1; }
    wait_terminal 90 "${ids[@]}" "$valid" || return
    jobs_ok --outcome rejected --running 0 --error-kind policy "${ids[@]}" || return
    jobs_ok --outcome succeeded --running 1 "$valid" || return
    # Each message names its field, on one line.
    python3 - "$D/views" "${ids[@]}" <<'PY' || { fail "$(cat "$D/messages.err")"; return 1; }
import json, sys
views, ids = sys.argv[1], sys.argv[2:]
want = {"key-to-host": "llm.base_url:", "worker-key-to-host": "llm.base_url:", "aws-key": "llm.api_key_env:",
        "broker-url": "secrets:", "worker-var": "secrets:", "host-net": "limits.network:",
        "bridge-net": "limits.network:", "pids": "limits.pids:", "memory": "limits.memory_mb:",
        "timeout": "limits.timeout_secs:", "webhook-loopback": "webhook.url:",
        "webhook-secret": "webhook.secret_env:", "root-user": "limits.user:",
        "other-input": "input.store_key:"}
bad = []
for i in ids:
    msg = json.load(open(f"{views}/{i}.json"))["result"]["error"]["message"]
    name = i.split("-hv-", 1)[1]
    if not msg.startswith(want[name]) or "\n" in msg:
        bad.append(f"{name}: {msg!r}")
if bad:
    open(views + "/../messages.err", "w").write("; ".join(bad))
    sys.exit(1)
PY
    local created=0
    for id in "${ids[@]}"; do
        created=$((created + $(docker events --since "$since" --until "$(date +%s)" --filter type=container \
            --filter event=create --filter "label=fleet.job_id=$id" --format '{{.ID}}' | wc -l)))
    done
    [ "$created" = 0 ] || { fail "$created containers were created for refused jobs"; return 1; }
    sleep 1
    [ ! -s "$D/received.jsonl" ] || { fail "the receiver got requests: $(head -c 300 "$D/received.jsonl")"; return 1; }
    local v
    for v in "$token" "$aws" "$llm_key" "$broker"; do
        if grep -rqF -- "$v" "$S"; then fail "a worker value is in the store: $(grep -rlF -- "$v" "$S" | head -n1)"; return 1; fi
        if grep -qF -- "$v" "$D/valid-env.json"; then fail "a worker value is in a container's environment"; return 1; fi
    done
    say "  ${#ids[@]} escapes refused (policy); no container, no request, no worker value in the store or a container"
    no_containers "${ids[@]}" "$valid" || return
    still_serving hv a || return
    no_panic
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_receiver() {
    python3 "$REPO/chaos/lib/receiver.py" "$HOOK_PORT" "$D/received.jsonl" >>"$D/receiver.log" 2>&1 &
    RECEIVER_PID=$!
    DRILL_PIDS+=("$RECEIVER_PID")
    wait_for 10 "the webhook receiver" grep -q listening "$D/receiver.log"
}

# A webhook receiver down while jobs finish, then back: deliveries are retried
# with backoff until it answers; each is recorded in status.json `webhooks`,
# signed, and arrives (at least once).
drill_webhook_down() {
    HOOK_PORT=$(free_port)
    local secret="chaos-secret-$RUN"
    # The job's webhook is on loopback and signed with the worker's secret: both
    # need the policy to allow them.
    drill_env webhook-down FLEET_WEBHOOK_URL="http://127.0.0.1:$HOOK_PORT/fleet" \
        FLEET_WEBHOOK_SECRET="$secret" FLEET_JOB_SECRETS=FLEET_WEBHOOK_SECRET \
        FLEET_WEBHOOK_ALLOW_PRIVATE=1
    local j1="c$RUN-wh-1" j2="c$RUN-wh-2"
    local hook="\"webhook\": {\"url\": \"http://127.0.0.1:$HOOK_PORT/job\", \"secret_env\": \"FLEET_WEBHOOK_SECRET\"}"
    : >"$D/received.jsonl"
    start_worker a -- --concurrency 2 || return
    say "  receiver down (nothing listens on 127.0.0.1:$HOOK_PORT)"
    submit "$D/jobs.json" "$(job "$j1" chaos-quick "$hook")" "$(job "$j2" chaos-quick)" || return
    wait_terminal 90 "$j1" "$j2" || return
    sleep 4
    say "  receiver back up"
    start_receiver || return
    wait_for 120 "every webhook delivered" eval 'view "$j1" "$j2"; check webhooks "$D/views" "$D/received.jsonl" "$secret" "$j1=2" "$j2=1" >/dev/null' || {
        fail "$REASON: $(check webhooks "$D/views" "$D/received.jsonl" "$secret" "$j1=2" "$j2=1")"
        return 1
    }
    local out
    out=$(check webhooks "$D/views" "$D/received.jsonl" "$secret" "$j1=2" "$j2=1") || { fail "$out"; return 1; }
    say "  $out"
    jobs_ok --outcome succeeded --running 1 "$j1" "$j2" || return
    no_containers "$j1" "$j2" || return
    still_serving wh a || return
    no_panic
}

start_docker_proxy() {
    rm -f "$D/docker.sock"
    python3 "$REPO/chaos/lib/docker_proxy.py" "$D/docker.sock" "$DOCKER_SOCK" >>"$D/proxy.log" 2>&1 &
    PROXY_PID=$!
    DRILL_PIDS+=("$PROXY_PID")
    wait_for 10 "the Docker socket proxy" test -S "$D/docker.sock"
}

# Docker unreachable. A worker that cannot reach Docker at start-up refuses to
# start (jobs stay queued). A worker whose Docker goes away (its DOCKER_HOST is a
# socket proxy we stop) fails each attempt as docker_unavailable, retries, then
# ends the job as failed and dead-letters its message; when Docker is back it
# serves again.
drill_docker_down() {
    case "${DOCKER_HOST:-}" in
        unix://*) DOCKER_SOCK=${DOCKER_HOST#unix://} ;;
        "") DOCKER_SOCK=/var/run/docker.sock ;;
        *) fail "DOCKER_HOST=$DOCKER_HOST is not a Unix socket: cannot put a proxy in front of it"; return 1 ;;
    esac
    drill_env docker-down FLEET_MAX_ATTEMPTS=3 FLEET_RETRY_TIERS_SECS=1,2
    local j0="c$RUN-dd-0" j1="c$RUN-dd-1"
    start_docker_proxy || return
    submit "$D/j0.json" "$(job "$j0" chaos-quick)" || return
    # A worker whose Docker is unreachable from the start.
    env "${FE[@]}" DOCKER_HOST=unix:///nonexistent.sock "$FLEET" worker --concurrency 1 \
        --metrics-addr 127.0.0.1:0 >"$D/worker-nodocker.log" 2>&1 &
    local bad=$!
    DRILL_PIDS+=("$bad")
    WORKER_PIDS+=("$bad")
    local i
    for i in $(seq 120); do alive "$bad" || break; sleep 0.5; done
    alive "$bad" && { fail "a worker without Docker kept running"; return 1; }
    wait "$bad"
    local rc=$?
    [ "$rc" = 1 ] || { fail "a worker without Docker exited with $rc, expected 1"; return 1; }
    say "  worker without Docker refused to start: $(grep -m1 -i docker "$D/worker-nodocker.log")"
    [ "$(state "$j0")" = queued ] || { fail "$j0 is $(state "$j0"), expected still queued"; return 1; }
    # A worker whose Docker goes away while it runs.
    start_worker a DOCKER_HOST="unix://$D/docker.sock" || return
    wait_terminal 60 "$j0" || return
    jobs_ok --outcome succeeded --running 1 "$j0" || return
    say "  Docker away for worker a (proxy pid $PROXY_PID stopped)"
    stop_pid "$PROXY_PID"
    rm -f "$D/docker.sock"
    submit "$D/j1.json" "$(job "$j1" chaos-quick)" || return
    wait_terminal 90 "$j1" || return
    jobs_ok --outcome failed --error-kind docker_unavailable --running 3 --attempt 3 "$j1" || return
    wait_for 20 "the failed job in ${P}fleet.dead" dead_count_is 1 || return
    say "  $j1 failed as docker_unavailable after 3 attempts; its message is in ${P}fleet.dead"
    no_containers "$j0" "$j1" || return
    say "  Docker back for worker a"
    start_docker_proxy || return
    still_serving dd a || return
    no_panic
}

# The broker restarted mid-batch (scripts/services/rabbitmq.sh restart drops
# every connection): workers reconnect, running jobs finish and their stale
# deliveries come back only to be skipped, queued jobs survive (durable queue,
# persistent messages), and a submit during the restart waits for the broker.
drill_broker_restart() {
    drill_env broker-restart FLEET_LEASE_SECS=10 FLEET_RETRY_TIERS_SECS=1,3
    local ids=() specs=() i
    for i in 1 2 3 4 5 6 7 8; do
        ids+=("c$RUN-br-$i")
        specs+=("$(job "c$RUN-br-$i" chaos-slow)")
    done
    start_worker a -- --concurrency 2 || return
    start_worker b -- --concurrency 2 || return
    submit "$D/jobs.json" "${specs[@]}" || return
    local running
    wait_for 60 "four jobs running" eval 'running=0; for i in "${ids[@]}"; do [ "$(state "$i")" = running ] && running=$((running + 1)); done; [ "$running" -ge 4 ]' || return
    say "  restarting RabbitMQ with 4 jobs running and 4 queued"
    BROKER_TOUCHED=1
    bash scripts/services/rabbitmq.sh restart >"$D/restart.log" 2>&1 &
    local restart=$!
    sleep 1
    local late="c$RUN-br-late"
    ids+=("$late")
    submit "$D/late.json" "$(job "$late" chaos-quick)" &
    local late_submit=$!
    wait "$restart" || { fail "rabbitmq.sh restart failed: $(tail -n1 "$D/restart.log")"; return 1; }
    wait "$late_submit" || { fail "a submit during the restart failed: $(tail -n1 "$D/submit.log")"; return 1; }
    say "  broker back; the submit during the restart went through"
    local w
    for w in a b; do
        wait_for 30 "worker $w to reconnect" grep -q "reconnected to the broker" "$D/worker-$w.log" || return
    done
    wait_terminal 240 "${ids[@]}" || return
    jobs_ok --outcome succeeded --running 1 "${ids[@]}" || return
    say "  redeliveries of jobs already done, skipped: $(cat "$D"/worker-*.log | grep -c 'already terminal')"
    no_containers "${ids[@]}" || return
    dead_count_is 0 || { fail "messages dead-lettered: $(check dead "$D/fleet.json" "$P" 0)"; return 1; }
    still_serving br a b || return
    no_panic
}

# The S3 endpoint down for 30 s (a dedicated moto frozen with SIGSTOP: connections
# hang, nothing answers) while jobs run and while a submit stores its job: the
# store retries within its budget, results land when it is back.
drill_s3_down() {
    local st
    st=$(FLEET_TEST_S3_PORT=$S3_PORT bash scripts/services/s3.sh status 2>/dev/null)
    [ "$st" != foreign ] || { fail "something else answers on 127.0.0.1:$S3_PORT (set FLEET_CHAOS_S3_PORT)"; return 1; }
    say "  starting a dedicated moto on 127.0.0.1:$S3_PORT"
    S3_STARTED=1
    local envs
    envs=$(FLEET_TEST_S3_PORT=$S3_PORT FLEET_TEST_S3_BUCKET=$S3_BUCKET bash scripts/services/s3.sh up 2>"$WORK/s3-up.log") ||
        { fail "moto did not start: $(tail -n1 "$WORK/s3-up.log")"; return 1; }
    local s3env=()
    mapfile -t s3env < <(sed -n 's/^export //p' <<<"$envs")
    S_OVERRIDE="s3://$S3_BUCKET/chaos-$RUN" drill_env s3-down "${s3env[@]}" FLEET_LEASE_SECS=60 FLEET_RETRY_TIERS_SECS=1,3
    local j1="c$RUN-s3-1" j2="c$RUN-s3-2" j3="c$RUN-s3-3"
    start_worker a -- --concurrency 2 || return
    submit "$D/jobs.json" "$(job "$j1" chaos-slow)" "$(job "$j2" chaos-slow)" || return
    wait_for 60 "both jobs running" eval 'running_with_container "$j1" && running_with_container "$j2"' || return
    sleep 2
    say "  S3 down for 30 s (SIGSTOP)"
    FLEET_TEST_S3_PORT=$S3_PORT bash scripts/services/s3.sh stop 2>>"$D/s3.log" || { fail "s3.sh stop failed"; return 1; }
    local t0=$SECONDS
    submit "$D/during.json" "$(job "$j3" chaos-quick)" &
    local during=$!
    sleep 30
    FLEET_TEST_S3_PORT=$S3_PORT bash scripts/services/s3.sh start 2>>"$D/s3.log" || { fail "s3.sh start failed"; return 1; }
    say "  S3 back after $((SECONDS - t0))s"
    wait "$during" || { fail "a submit during the outage failed: $(tail -n1 "$D/submit.log")"; return 1; }
    local waited
    waited=$(sed -n 's/.*1 jobs submitted in \([0-9]*\).*/\1/p' "$D/submit.log" | tail -n1)
    [ "${waited:-0}" -ge 20 ] || { fail "the submit during the outage took ${waited:-?}s: the outage did not reach it"; return 1; }
    say "  the submit during the outage waited for S3 and went through after ${waited}s"
    wait_terminal 240 "$j1" "$j2" "$j3" || return
    jobs_ok --outcome succeeded --running 1 "$j1" "$j2" "$j3" || return
    no_containers "$j1" "$j2" "$j3" || return
    still_serving s3 a || return
    no_panic
    FLEET_TEST_S3_PORT=$S3_PORT bash scripts/services/s3.sh down >/dev/null 2>&1
    S3_STARTED=0
}

# ---------------------------------------------------------------------------
# Ownership drills: one run, one result, under partial failure.

# llm_ok RUNS [--step K=N] ID...: the scripted LLM's own log agrees.
llm_ok() {
    local out
    out=$(check llm "$LLM_LOG" "$@") || { fail "$out"; return 1; }
    say "  $out"
}

# cut_consumers QUEUE: closes the broker connection(s) consuming from QUEUE, one
# by one with `rabbitmqctl close_connection` (the broker and its other clients
# are untouched), as a lost connection or the broker's consumer_timeout does.
cut_consumers() {
    local queue=$1 chans conns c i
    for i in $(seq 60); do
        chans=$(rabbitmqctl -q list_consumers -p / queue_name channel_pid --no-table-headers 2>/dev/null |
            awk -F'\t' -v q="$queue" '$1 == q { print $2 }')
        [ -n "$chans" ] && break
        sleep 0.5
    done
    [ -n "$chans" ] || { fail "no consumer on $queue to cut"; return 1; }
    conns=$(rabbitmqctl -q list_channels pid connection --no-table-headers 2>/dev/null |
        awk -F'\t' -v chans="$chans" 'BEGIN { n = split(chans, a, "\n"); for (i = 1; i <= n; i++) want[a[i]] = 1 }
            ($1 in want) { print $2 }' | sort -u)
    for c in $conns; do
        rabbitmqctl -q close_connection "$c" "chaos drill: connection cut" >/dev/null 2>&1 ||
            { fail "rabbitmqctl close_connection $c failed"; return 1; }
    done
    say "  cut the broker connection of $queue's consumer"
}

# store_files ID: the job's files in the drill's local store with their
# modification times and sizes, as the file system sees them.
store_files() {
    find "$S/jobs/$1" -type f ! -name .lock -printf '%P %T@ %s\n' 2>/dev/null | sort
}

# worker_of ID: the name of the drill worker the job's status names.
worker_of() {
    local w id
    view "$1"
    id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"].get("worker",""))' "$D/views/$1.json")
    for w in "${!WID[@]}"; do [ "${WID[$w]}" = "$id" ] && echo "$w"; done
}

# SIGSTOP the worker running a job past its lease and cut its broker connection:
# another worker takes the job over and finishes it; then SIGCONT. The woken
# worker removes its container at once and writes nothing (file times in the
# store), the LLM saw two runs start and one finish, the receiver one delivery.
drill_pause_worker() {
    HOOK_PORT=$(free_port)
    drill_env pause-worker FLEET_LEASE_SECS=3 FLEET_RETRY_TIERS_SECS=1,3 \
        FLEET_WEBHOOK_URL="http://127.0.0.1:$HOOK_PORT/fleet"
    : >"$D/received.jsonl"
    start_receiver || return
    local j="c$RUN-pw-1"
    start_worker a || return
    submit "$D/jobs.json" "$(job "$j" chaos-pause)" || return
    wait_for 60 "$j running in a container" running_with_container "$j" || return
    wait_for 30 "$j's first command" eval '[ "$(check llm "$LLM_LOG" 1 "$j" >/dev/null && echo y)" = y ]' || return
    local cont
    cont=$(containers_of "$j")
    say "  SIGSTOP worker a (pid ${WPID[a]}) while $j runs in $cont"
    kill -STOP "${WPID[a]}"
    cut_consumers "${P}fleet.jobs" || return
    start_worker b || return
    wait_terminal 120 "$j" || return
    wait_for 30 "the completion webhook" eval '[ -s "$D/received.jsonl" ]' || return
    sleep 1
    store_files "$j" >"$D/files-before"
    gone "$cont" && { fail "a's container went while a was stopped"; return 1; }
    kill -CONT "${WPID[a]}"
    local t=$SECONDS
    wait_for 10 "a's container $cont to be removed after waking" gone "$cont" || return
    say "  a's container removed $((SECONDS - t))s after SIGCONT"
    wait_for 30 "a to notice it lost the job" grep -q "lost its job" "$D/worker-a.log" || return
    sleep 3
    store_files "$j" >"$D/files-after"
    cmp -s "$D/files-before" "$D/files-after" ||
        { fail "a wrote after waking: $(diff "$D/files-before" "$D/files-after" | head -n3 | tr '\n' ' ')"; return 1; }
    jobs_ok --outcome succeeded --running 2 --attempt 2 "$j" || return
    llm_ok 2 --step 1=1 "$j" || return
    local ran
    ran=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["result"].get("worker",""))' "$D/views/$j.json")
    [ "$ran" = "${WID[b]}" ] || { fail "the result is from $ran, not worker b"; return 1; }
    local ids
    ids=$(python3 -c 'import json,sys
ids=[json.loads(l)["headers"].get("X-Fleet-Delivery") for l in open(sys.argv[1]) if l.strip()]
print(len(ids), len(set(ids)))' "$D/received.jsonl")
    [ "$ids" = "1 1" ] || { fail "the receiver got deliveries (total, distinct ids): $ids"; return 1; }
    say "  one webhook delivery, one delivery id; nothing written by a after waking"
    still_serving pw a b || return
    no_panic
}

# A job whose worker is killed every time it runs: FLEET_MAX_ATTEMPTS runs (by
# the LLM's count), then failed/worker_lost with its message in fleet.dead; the
# other jobs of the batch finish.
drill_poison() {
    drill_env poison FLEET_LEASE_SECS=3 FLEET_RETRY_TIERS_SECS=1,3 FLEET_MAX_ATTEMPTS=2
    local j="c$RUN-po-1" ok1="c$RUN-po-ok1" ok2="c$RUN-po-ok2" n=0 attempt w
    start_worker w0 || return
    start_worker w1 || return
    submit "$D/jobs.json" "$(job "$j" chaos-poison)" "$(job "$ok1" chaos-quick)" "$(job "$ok2" chaos-quick)" || return
    for attempt in 1 2; do
        wait_for 90 "attempt $attempt of $j" eval \
            '[ "$(check llm "$LLM_LOG" '"$attempt"' "$j" >/dev/null && echo y)" = y ] && running_with_container "$j"' || return
        w=$(worker_of "$j")
        [ -n "$w" ] || { fail "no drill worker runs $j"; return 1; }
        say "  kill -9 worker $w, which runs attempt $attempt of $j"
        kill -KILL "${WPID[$w]}"
        wait "${WPID[$w]}" 2>/dev/null
        n=$((n + 1))
        start_worker "r$n" || return
    done
    wait_terminal 120 "$j" "$ok1" "$ok2" || return
    jobs_ok --outcome failed --error-kind worker_lost --running 2 --attempt 2 "$j" || return
    llm_ok 2 "$j" || return
    jobs_ok --outcome succeeded --running-min 1 --running-max 2 "$ok1" "$ok2" || return
    wait_for 30 "$j's message in ${P}fleet.dead" dead_count_is 1 || return
    no_containers "$j" "$ok1" "$ok2" || return
    no_panic
}

# A garbage message with a queued job's id, published next to its real message:
# dead-lettered, the job's records untouched; the job runs once and succeeds.
drill_garbage_dup() {
    drill_env garbage-dup FLEET_RETRY_TIERS_SECS=1,3
    local j="c$RUN-gd-1"
    submit "$D/jobs.json" "$(job "$j" chaos-quick)" || return
    "$PIKA_PY" "$REPO/chaos/lib/amqp.py" raw "$P" "$j" '{"id": "'"$j"'", "task": 42' 2>>"$D/publish.log" ||
        { fail "publishing the garbage failed: $(tail -n1 "$D/publish.log")"; return 1; }
    start_worker a || return
    wait_terminal 60 "$j" || return
    jobs_ok --outcome succeeded --running 1 "$j" || return
    python3 -c 'import json,sys
h=[t["state"] for t in json.load(open(sys.argv[1]))["status"]["history"]]
sys.exit("rejected" in h)' "$D/views/$j.json" || { fail "rejected in $j's history"; return 1; }
    llm_ok 1 "$j" || return
    wait_for 30 "the garbage in ${P}fleet.dead" dead_count_is 1 || return
    still_serving gd a || return
    no_panic
}

# `fleet submit` with the broker unreachable: exit 1 naming every job not
# published; the same command again publishes them and each runs once.
drill_submit_broker_down() {
    drill_env submit-broker-down FLEET_RETRY_TIERS_SECS=1,3
    local j1="c$RUN-sb-1" j2="c$RUN-sb-2" j3="c$RUN-sb-3" id rc
    write_jobs "$D/jobs.json" "$(job "$j1" chaos-quick)" "$(job "$j2" chaos-quick)" "$(job "$j3" chaos-quick)"
    local down="amqp://guest:guest@127.0.0.1:$(free_port)/%2f"
    env "${FE[@]}" FLEET_QUEUE="$down" "$FLEET" submit "$D/jobs.json" >"$D/down.out" 2>"$D/down.err"
    rc=$?
    [ "$rc" = 1 ] || { fail "fleet submit with the broker down exited $rc"; return 1; }
    for id in "$j1" "$j2" "$j3"; do
        grep -q "$id" "$D/down.err" || { fail "$id not named: $(tail -n2 "$D/down.err")"; return 1; }
    done
    say "  $(grep -m1 'not confirmed' "$D/down.err")"
    start_worker a -- --concurrency 3 || return
    sleep 3
    llm_ok 0 "$j1" "$j2" "$j3" || return
    fleet submit "$D/jobs.json" >"$D/again.out" 2>"$D/again.err" || { fail "the second submit failed: $(tail -n1 "$D/again.err")"; return 1; }
    wait_terminal 90 "$j1" "$j2" "$j3" || return
    jobs_ok --outcome succeeded --running 1 "$j1" "$j2" "$j3" || return
    llm_ok 1 "$j1" "$j2" "$j3" || return
    no_panic
}

# A job longer than the broker's delivery timeout: its delivery is taken back
# and delivered again while it runs (RabbitMQ ≥ 3.12: a `consumer-timeout`
# policy on this drill's own queue; older brokers: its consumer's connection is
# cut, which is what the timeout does to it). The redelivery starts no second
# run; an LLM outage afterwards still counts attempts (the record keeps them):
# failed after FLEET_MAX_ATTEMPTS, message in fleet.dead.
drill_stale_delivery() {
    drill_env stale-delivery FLEET_LEASE_SECS=3 FLEET_RETRY_TIERS_SECS=1,3 FLEET_MAX_ATTEMPTS=2
    local j="c$RUN-sd-1" policy=""
    local v
    v=$(rabbitmqctl -q version 2>/dev/null)
    if [ "$(printf '%s\n3.12.0\n' "$v" | sort -V | head -n1)" = 3.12.0 ]; then
        policy="chaos-$RUN-ct"
        rabbitmqctl -q set_policy -p / --apply-to queues "$policy" "^$(printf '%s' "$P" | sed 's/\./\\./g')fleet\\.jobs\$" '{"consumer-timeout": 4000}' >/dev/null ||
            { fail "setting the consumer-timeout policy failed"; return 1; }
    fi
    start_worker a || return
    submit "$D/jobs.json" "$(job "$j" chaos-stale)" || return
    wait_for 60 "$j's first command" eval '[ "$(check llm "$LLM_LOG" 1 "$j" >/dev/null && echo y)" = y ]' || return
    if [ -z "$policy" ]; then
        say "  RabbitMQ $v has no per-queue consumer timeout: cutting the consumer's connection instead"
        cut_consumers "${P}fleet.jobs" || return
    fi
    wait_terminal 120 "$j" || { [ -n "$policy" ] && rabbitmqctl -q clear_policy -p / "$policy"; return 1; }
    [ -n "$policy" ] && rabbitmqctl -q clear_policy -p / "$policy" >/dev/null
    jobs_ok --outcome failed --error-kind llm_unavailable --running 2 --attempt 2 "$j" || return
    llm_ok 2 "$j" || return
    wait_for 30 "$j's message in ${P}fleet.dead" dead_count_is 1 || return
    no_containers "$j" || return
    no_panic
}

# Two workers on one local store directory (local workspaces), 100 jobs each
# published twice: each job runs once, by a ledger each run appends to outside
# its workspace and by the LLM's log.
drill_two_local_workers() {
    local ledger
    drill_env two-local-workers FLEET_RETRY_TIERS_SECS=1,3
    ledger="$D/ledger.txt"
    : >"$ledger"
    local ids=() jobs=() i id
    for i in $(seq 100); do
        id="c$RUN-tl-$i"
        ids+=("$id")
        jobs+=("$(job "$id" chaos-ledger "\"env\": {\"MARK\": \"$id\", \"LEDGER\": \"$ledger\"}")")
    done
    write_jobs "$D/jobs.json" "${jobs[@]}"
    # Twice: every job has two messages, so the workers race for each claim.
    fleet submit "$D/jobs.json" >/dev/null 2>>"$D/submit.log" || { fail "submit failed: $(tail -n1 "$D/submit.log")"; return 1; }
    fleet submit "$D/jobs.json" >/dev/null 2>>"$D/submit.log" || { fail "submit failed: $(tail -n1 "$D/submit.log")"; return 1; }
    start_worker a -- --concurrency 4 --workspace local || return
    start_worker b -- --concurrency 4 --workspace local || return
    wait_terminal 300 "${ids[@]}" || return
    jobs_ok --outcome succeeded --running 1 "${ids[@]}" || return
    local out
    out=$(check ledger "$ledger" "${ids[@]}") || { fail "$out"; return 1; }
    say "  $out"
    llm_ok 1 "${ids[@]}" || return
    no_panic
}

# ---------------------------------------------------------------------------

for name in "${selected[@]}"; do
    say "== $name"
    REASON=""
    t0=$SECONDS
    S_OVERRIDE=""
    "drill_${name//-/_}"
    rc=$?
    [ "$rc" = 0 ] || [ -n "$REASON" ] || REASON="exited with $rc"
    drill_cleanup
    if [ "$rc" = 0 ]; then
        echo "PASS $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name: $REASON"
        failed=$((failed + 1))
    fi
    say "   $name took $((SECONDS - t0))s"
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

#!/usr/bin/env bash
# The agent-fleet benchmark: how much the fleet adds on top of the containers and
# the model, and how far one host goes. A benchmark, not a test: it prints one
# table (every figure and ratio measured in this run, the machine in the header,
# the project's aims beside the figures, misses marked MISS) and always exits 0
# unless it could not run at all.
#
#   scripts/bench.sh                  # everything (~30 min on 2 cores)
#   scripts/bench.sh --quick          # smaller counts, a smoke run (~5 min)
#   scripts/bench.sh --only 1,2       # some rows (1-8; ranges like 1-3 work)
#   scripts/bench.sh --no-openhands   # row 7 quotes the SDK's reference figures
#   scripts/bench.sh --no-rabbitmq    # skip rows 5, 6, 8 (and do not start RabbitMQ)
#   scripts/bench.sh --json FILE      # also write the raw numbers as JSON
#   scripts/bench.sh --keep           # keep the work dir (job files, stores, logs)
#
# Rows: 1 per-job overhead vs `docker run --rm IMAGE true`; 2 per-step overhead vs
# `docker exec`; 3 file_editor on a 1 MiB file vs `docker cp`; 4 200 (and 50)
# concurrent slow jobs in one process: peak RSS, CPU per step; 5 `fleet submit`
# throughput and enqueue-to-start latency (RabbitMQ); 6 1,000 jobs through 2
# workers vs bare containers, with the daemons' CPU and Docker API calls per job
# (fleet vs bare, through a counting proxy on the engine socket); 7 side by side
# with the OpenHands SDK (its baseline script beside the checkout,
# ../shared/bench/openhands-baseline/run.sh, needs a Python >= 3.12 and PyPI the
# first time); 8 row 6's batch on the local workspace (no Docker).
#
# What it does first: builds the workspace image (scripts/build-images.sh) and the
# release binary, and starts the local RabbitMQ (scripts/services/rabbitmq.sh,
# installs it when missing) for rows 5, 6 and 8. Each batch gets its own vhost,
# deleted afterwards. Progress goes to stderr, the table to stdout. Every
# container and process the bench starts is stopped by id, also on Ctrl-C.
#
# The harness is benches/fleet.rs (`cargo bench --bench fleet -- FLAGS` runs it
# directly against an already built target/release/fleet).
set -euo pipefail
cd "$(dirname "$0")/.."

rabbit=1
rows_need_rabbit=1
prev=
for a in "$@"; do
    case "$a" in
        -h | --help)
            sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --no-rabbitmq) rabbit=0 ;;
    esac
    if [ "$prev" = --only ]; then
        # Only rows 5, 6 and 8 need the broker.
        case ",$a," in
            *5* | *6* | *8* | *-*) ;;
            *) rows_need_rabbit=0 ;;
        esac
    fi
    prev=$a
done

echo "bench: building the workspace image and the release binary" >&2
bash scripts/build-images.sh >&2
cargo build --release --locked --bin fleet >&2

if [ "$rabbit" = 1 ] && [ "$rows_need_rabbit" = 1 ]; then
    if ! bash scripts/services/rabbitmq.sh status; then
        echo "bench: starting RabbitMQ for rows 5, 6 and 8" >&2
        bash scripts/services/rabbitmq.sh start >&2 ||
            echo "bench: RabbitMQ did not start; rows 5, 6 and 8 will say so" >&2
    fi
fi

target=${CARGO_TARGET_DIR:-target}
exec cargo bench --locked --bench fleet -- --fleet "$target/release/fleet" "$@"

#!/usr/bin/env bash
# The test command (README "Quickstart"): installs and starts what the tests need —
# the workspace and worker images, RabbitMQ, an S3 API server, a container
# registry, the TLS and proxy tools — then runs every test.
# Idempotent: fine to run again with everything already there.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "workspace image"
bash scripts/build-images.sh

step "tools (stunnel, socat, openssl)"
bash scripts/services/tools.sh

step "prometheus (promtool and the server the metrics tests start)"
bash scripts/services/prometheus.sh

step "rabbitmq"
bash scripts/services/rabbitmq.sh

step "s3 (moto server)"
eval "$(bash scripts/services/s3.sh up)"

step "registry (docker-registry with htpasswd auth)"
eval "$(bash scripts/services/registry.sh up)"

step "kubernetes schemas (kubernetes-validate)"
eval "$(bash scripts/services/k8s-validate.sh)"

step "worker image (agent-fleet/worker:latest)"
bash scripts/build-images.sh worker

if ! command -v cargo-nextest >/dev/null 2>&1; then
  step "cargo-nextest"
  cargo install --locked cargo-nextest
fi

step "building"
cargo build --locked --bin fleet --tests

step "tests"
cargo nextest run --locked --no-fail-fast "$@"

# Drills that restart the shared broker run alone, one at a time, after the rest.
if [ $# -eq 0 ]; then
  step "broker drills (serial)"
  cargo nextest run --locked --no-fail-fast --run-ignored only -j 1
fi

#!/usr/bin/env bash
# The offline quickstart: builds fleet and the example workspace image, then runs
# jobs.example.json in Docker containers against the scripted LLM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-images.sh
cargo build --release --locked --bin fleet
exec ./target/release/fleet run jobs.example.json --mock-llm examples/mock-llm --store "${FLEET_STORE:-./fleet-data}" "$@"

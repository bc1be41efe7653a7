# The fleet worker image: `fleet` on Debian slim (deploy/docker-compose.yml and
# deploy/k8s/ run it as `fleet worker`).
#
#   docker build -t agent-fleet/worker .
#
# The base images are build arguments (a mirror, or other pinned tags):
#   docker build --build-arg RUST_IMAGE=… --build-arg RUNTIME_IMAGE=… -t agent-fleet/worker .
# scripts/build-images.sh worker builds it, with local stand-ins for bases that cannot
# be pulled.
#
# Works with the classic builder and BuildKit alike (no cache mounts): the
# dependencies are built in their own layer from the manifest and lock file, so a
# source change rebuilds only the crate.

# rust-version in Cargo.toml is 1.94.1: the builder needs at least that.
ARG RUST_IMAGE=rust:1.94.1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# Dependencies first: a stub crate with the real manifest and lock file. Every
# target the manifest names (the binary, the test binary, the bench) must exist for
# cargo to read it.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/it/main.rs benches/fleet.rs \
    && cargo build --release --locked --bin fleet \
    && rm -rf src tests

# The crate itself; touching the roots makes cargo rebuild it over the stub.
COPY src ./src
RUN mkdir -p tests/it && touch tests/it/main.rs src/main.rs src/lib.rs \
    && cargo build --release --locked --bin fleet \
    && install -m 0755 target/release/fleet /usr/local/bin/fleet

FROM ${RUNTIME_IMAGE}
# ca-certificates: HTTPS to the LLM provider, S3 and webhook receivers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A non-root user for deployments that reach Docker over a socket they grant to
# it (the Kubernetes DinD sidecar); Compose runs the worker as root to open the
# host's socket.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/fleet fleet
COPY --from=builder /usr/local/bin/fleet /usr/local/bin/fleet
USER 10001
WORKDIR /var/lib/fleet
# /metrics, /healthz, /readyz when FLEET_METRICS_ADDR=0.0.0.0:9100.
EXPOSE 9100
ENTRYPOINT ["fleet"]
CMD ["worker"]

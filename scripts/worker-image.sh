#!/bin/sh
# Builds agent-fleet/worker:latest from the repository's Dockerfile (run through
# `scripts/build-images.sh worker`).
#
#   worker-image.sh [--force]
#
# The Dockerfile's base images are build arguments (RUST_IMAGE for the builder stage,
# RUNTIME_IMAGE for the image that ships); set them in the environment to use other
# tags or a mirror. A base image that is neither present nor pullable (a machine
# without access to a registry) is replaced by a stand-in made here:
#   - the runtime base: a Debian bookworm rootfs from `debootstrap --variant=minbase`
#     imported with `docker import` (agent-fleet/standin:debian-bookworm);
#   - the builder base: that rootfs plus gcc and libc headers from Debian, and this
#     host's Rust toolchain (`rustc --print sysroot`) copied in
#     (agent-fleet/standin:rust-bookworm).
# The Dockerfile itself is what a user with a registry builds.
#
# A stand-in trusts the host's local CAs (/usr/local/share/ca-certificates) too.
#
# Idempotent: skips the build when the image exists and was built from the same
# sources (label agent-fleet.source), unless --force. Needs a running
# Docker engine; stand-ins need Debian's apt (debootstrap) and a Rust toolchain.
set -eu

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
tag=agent-fleet/worker:latest
RUST_IMAGE=${RUST_IMAGE:-rust:1.94.1-bookworm}
RUNTIME_IMAGE=${RUNTIME_IMAGE:-debian:bookworm-slim}
# A Debian mirror for debootstrap (its own default when unset).
DEBIAN_MIRROR=${DEBIAN_MIRROR:-}
STANDIN_DEBIAN=agent-fleet/standin:debian-bookworm
STANDIN_RUST=agent-fleet/standin:rust-bookworm

log() { echo "worker-image.sh: $*" >&2; }

# What the image is built from; an image with another source is rebuilt (the
# dependency layer stays cached while Cargo.toml and Cargo.lock do not change).
source_hash=$(cd "$repo" && { cat Cargo.toml Cargo.lock Dockerfile; find src -type f | LC_ALL=C sort | xargs cat; } | sha256sum | cut -c1-16)
if [ "$force" = 0 ] && [ "$(docker image inspect -f '{{ index .Config.Labels "agent-fleet.source" }}' "$tag" 2>/dev/null)" = "$source_hash" ]; then
    echo "image exists ($tag, source $source_hash); use --force to rebuild"
    exit 0
fi

present() { docker image inspect "$1" >/dev/null 2>&1; }
# Present, or pulled now. A registry that cannot be reached fails at once here.
available() { present "$1" || docker pull "$1" >/dev/null 2>&1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

standin_debian() {
    present "$STANDIN_DEBIAN" && return 0
    if ! command -v debootstrap >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || { log "debootstrap is needed: apt-get install debootstrap"; exit 1; }
        export DEBIAN_FRONTEND=noninteractive
        apt-cache show debootstrap >/dev/null 2>&1 || apt-get update
        apt-get install -y --no-install-recommends debootstrap
    fi
    log "making $STANDIN_DEBIAN with debootstrap (no registry to pull $RUNTIME_IMAGE from)"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$work/rootfs" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    # The stand-in trusts what this host trusts beyond Debian's bundle (local CAs,
    # e.g. of a TLS-inspecting proxy), so cargo and apt inside it reach what the
    # host reaches.
    if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
        cp /usr/local/share/ca-certificates/*.crt "$work/rootfs/usr/local/share/ca-certificates/"
        chroot "$work/rootfs" update-ca-certificates >/dev/null
    fi
    tar -C "$work/rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["bash"]' - "$STANDIN_DEBIAN" >/dev/null
    rm -rf "$work/rootfs"
}

standin_rust() {
    present "$STANDIN_RUST" && return 0
    standin_debian
    sysroot=$(rustc --print sysroot) || { log "a Rust toolchain is needed for the builder stand-in"; exit 1; }
    log "making $STANDIN_RUST: $STANDIN_DEBIAN + gcc + the host's toolchain ($(rustc --version))"
    ctx="$work/rust"
    mkdir -p "$ctx/rust"
    # The compiler, cargo and the standard library; not the documentation.
    cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
    [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$ctx/rust/"
    cat >"$ctx/Dockerfile" <<EOF
FROM $STANDIN_DEBIAN
RUN apt-get update \\
    && apt-get install -y --no-install-recommends gcc libc6-dev make pkg-config \\
    && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
    DOCKER_BUILDKIT=0 docker build -q -t "$STANDIN_RUST" "$ctx" >/dev/null
    rm -rf "$ctx"
}

if ! available "$RUNTIME_IMAGE"; then
    standin_debian
    RUNTIME_IMAGE=$STANDIN_DEBIAN
fi
if ! available "$RUST_IMAGE"; then
    standin_rust
    RUST_IMAGE=$STANDIN_RUST
fi

log "building $tag (builder $RUST_IMAGE, runtime $RUNTIME_IMAGE)"
start=$(date +%s)
DOCKER_BUILDKIT=0 docker build \
    --label "agent-fleet.source=$source_hash" \
    --build-arg "RUST_IMAGE=$RUST_IMAGE" \
    --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" \
    -t "$tag" "$repo"
log "built $tag in $(( $(date +%s) - start ))s"

# Fail here, not in the tests, if the image is unusable.
docker run --rm "$tag" --version

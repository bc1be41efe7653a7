#!/bin/sh
# Builds the project's images:
#
#   build-images.sh [workspace] [--force]   agent-fleet/workspace:test and :latest, the
#       workspace image the tests and the quickstart use, from images/workspace/Dockerfile
#       (FROM scratch + Debian's static busybox). Nothing is pulled.
#   build-images.sh worker [--force]        agent-fleet/worker:latest, the fleet worker,
#       from the repository's Dockerfile (scripts/worker-image.sh).
#
# Idempotent: skips a build when the image exists, unless --force.
# Needs Debian (apt) and a running Docker engine. The classic builder is used because
# BuildKit may be missing.
set -eu

force=0
target=workspace
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        workspace|worker) target=$arg ;;
        -h|--help) echo "usage: $0 [workspace|worker] [--force]"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [ "$target" = worker ]; then
    if [ "$force" = 1 ]; then
        exec sh "$(dirname "$0")/worker-image.sh" --force
    fi
    exec sh "$(dirname "$0")/worker-image.sh"
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
tags="agent-fleet/workspace:test agent-fleet/workspace:latest"

if [ "$force" = 0 ]; then
    missing=0
    for t in $tags; do
        docker image inspect "$t" >/dev/null 2>&1 || missing=1
    done
    if [ "$missing" = 0 ]; then
        echo "images exist ($tags); use --force to rebuild"
        exit 0
    fi
fi

# A dynamically linked busybox would not run in a scratch image.
is_static() {
    [ -x /bin/busybox ] || return 1
    out=$(ldd /bin/busybox 2>&1 || true)
    case "$out" in
        *"not a dynamic executable"*|*"statically linked"*) return 0 ;;
        *) return 1 ;;
    esac
}

if ! is_static; then
    if [ "$(id -u)" != 0 ]; then
        echo "a static /bin/busybox is needed: run as root or 'apt-get install busybox-static'" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the package lists only when apt does not know the package yet.
    if ! apt-cache show busybox-static >/dev/null 2>&1; then
        apt-get update
    fi
    apt-get install -y --no-install-recommends busybox-static
    is_static || { echo "/bin/busybox is still not static" >&2; exit 1; }
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT INT TERM
root="$ctx/rootfs"
mkdir -p "$root/bin" "$root/tmp" "$root/workspace" "$root/root" "$root/etc"
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
chmod 1777 "$root/tmp"
chmod 700 "$root/root"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
cp "$repo/images/workspace/Dockerfile" "$ctx/Dockerfile"

set --
for t in $tags; do
    set -- "$@" -t "$t"
done
DOCKER_BUILDKIT=0 docker build "$@" "$ctx"

# Fail here, not in the tests, if the image is unusable.
docker run --rm --network none agent-fleet/workspace:test sh -c 'test -d /tmp && test -d /workspace && echo ok' | grep -qx ok
echo "built $tags"

#!/usr/bin/env bash
# Command-line tools that tests start themselves, each on its own port:
#   stunnel4  a TLS terminator in front of the test broker (amqps:// tests)
#   socat     a TCP proxy of the Docker engine's socket (DOCKER_HOST=tcp:// tests)
#   openssl   the CA and certificates those tests make
# Installs what is missing (Debian's apt); idempotent; starts nothing.
set -euo pipefail

need=()
command -v stunnel4 >/dev/null || need+=(stunnel4)
command -v socat >/dev/null || need+=(socat)
command -v openssl >/dev/null || need+=(openssl)
[ ${#need[@]} -eq 0 ] && exit 0

[ "$(id -u)" = 0 ] || { echo "tools.sh: missing ${need[*]}: apt-get install ${need[*]}" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-cache show "${need[@]}" >/dev/null 2>&1 || apt-get update >&2
# policy-rc.d keeps stunnel4's own service from being started by the package.
policy=/usr/sbin/policy-rc.d made=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made=1; fi
status=0
apt-get install -y --no-install-recommends "${need[@]}" >&2 || status=$?
[ $made = 1 ] && rm -f "$policy"
exit $status

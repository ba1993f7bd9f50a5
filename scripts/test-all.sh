#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite: the README's test command, and what .ci/run calls.
# Installs the services the integration tests start themselves (etcd, nats-server) and the native build tools,
# then `npm ci` (which builds the native addon and compiles TypeScript), then the tap suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  echo "test-all: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

npm ci --no-audit --no-fund
npm test

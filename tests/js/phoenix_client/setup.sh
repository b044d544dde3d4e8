#!/usr/bin/env bash
# Prepares the Phoenix JavaScript client test (tests/phoenix_js.rs) on a fresh
# Debian 12 machine, bounded in time: Node >= 20 (Debian 12 ships 18, so when
# the system node is older, Node 20 comes from npm's `node` package) and the
# locked npm packages (`phoenix`, `ws`). Progress goes to stderr; stdout is one
# line for the caller to eval: `export STARCITE_NODE=<path to node >= 20>`.
set -euo pipefail
cd "$(dirname "$0")"

log() { echo "phoenix-js: $*" >&2; }
major() { "$1" --version 2>/dev/null | sed -nE 's/^v([0-9]+)\..*/\1/p'; }
new_enough() { local m; m=$(major "$1"); [ -n "$m" ] && [ "$m" -ge 20 ]; }

if ! command -v npm >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { log "need root to apt-get install npm"; exit 1; }
    log "installing npm (Debian)"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends npm >&2
fi

node=""
if command -v node >/dev/null 2>&1 && new_enough node; then
    node=$(command -v node)
elif [ -x .node/node_modules/.bin/node ] && new_enough .node/node_modules/.bin/node; then
    node="$PWD/.node/node_modules/.bin/node"
else
    log "system node is older than 20: installing node@20 from npm into $PWD/.node"
    mkdir -p .node
    timeout 300 npm install --prefix .node --no-audit --no-fund --no-save node@20 >&2
    node="$PWD/.node/node_modules/.bin/node"
    new_enough "$node" || { log "node@20 from npm did not install"; exit 1; }
fi
log "node $("$node" --version) at $node"

if [ ! -f node_modules/phoenix/package.json ]; then
    PATH="$(dirname "$node"):$PATH" timeout 300 npm ci --no-audit --no-fund >&2
fi
echo "export STARCITE_NODE=$node"

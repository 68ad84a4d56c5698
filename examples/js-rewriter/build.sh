#!/usr/bin/env bash
# Build the JavaScript example plugin: target/guests/polyglot/js-rewriter.wasm
# (relative to the repository root).
#
# componentize-js is installed from package-lock.json (exact versions and
# integrity hashes) into node_modules/ when it is missing or older than the
# lock file. Needs node 18 or newer and npm.
#
# The world is wit/world.wit here: it includes the host's imports and exports
# the phases this plugin implements. wit/deps/natsplug-plugin is a link to the
# repository's wit/ directory, so the build always uses the contract in the
# tree (natsplug:plugin@0.2.0, wit/plugin.wit).
#
# `npm install --no-save`, not `npm ci`: the lock file lists only the
# platform-specific optional packages (native bindings of rolldown, oxc, ...)
# that the registry served when it was made, and `npm ci` refuses a lock file
# that lacks any optional package of another platform. `npm install` keeps
# every version the lock file pins and, with --no-save, never rewrites it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out_dir="$root/target/guests/polyglot"
out="$out_dir/js-rewriter.wasm"

cd "$here"
installed="node_modules/.package-lock.json"
if [ ! -x node_modules/.bin/componentize-js ] || [ ! -f "$installed" ] || [ package-lock.json -nt "$installed" ]; then
    echo "js-rewriter: installing the pinned tools into node_modules/"
    npm install --no-save --no-audit --no-fund --loglevel=error
fi

mkdir -p "$out_dir"
echo "js-rewriter: building $out"
# No wasi:http imports: the host provides WASI 0.2 without wasi:http.
# Written next to the target and renamed, so a failed build leaves no
# truncated component behind.
node_modules/.bin/componentize-js src/rewriter.js \
    --wit "$here/wit" --world-name plugin \
    --disable http fetch-event \
    --out "$out.tmp"
mv "$out.tmp" "$out"
echo "js-rewriter: $(wc -c <"$out") bytes"

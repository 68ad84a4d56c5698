#!/usr/bin/env bash
# Build the Python example plugin: target/guests/polyglot/python-validator.wasm
# (relative to the repository root).
#
# componentize-py is installed, at the version pinned below, into .venv/ next
# to this script when it is missing or at another version. Needs python3
# (3.9 or newer) with the venv module; PYTHON overrides the interpreter.
#
# The world is wit/world.wit here: it includes the host's imports and exports
# the phases this plugin implements. wit/deps/natsplug-plugin is a link to the
# repository's wit/ directory, so the build always uses the contract in the
# tree (natsplug:plugin@0.2.0, wit/plugin.wit).
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
tool="$venv/bin/componentize-py"
out_dir="$root/target/guests/polyglot"
out="$out_dir/python-validator.wasm"

if [ ! -x "$tool" ] || [ "$("$tool" --version 2>/dev/null)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
    echo "python-validator: installing componentize-py $COMPONENTIZE_PY_VERSION into $venv"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
        "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

mkdir -p "$out_dir"
cd "$here"
echo "python-validator: building $out"
# Written next to the target and renamed, so a failed build leaves no
# truncated component behind.
"$tool" --quiet --wit-path "$here/wit" --world plugin \
    componentize --python-path src --output "$out.tmp" app
mv "$out.tmp" "$out"
echo "python-validator: $(wc -c <"$out") bytes"

#!/usr/bin/env bash
# Builds the example plugins and natsplug, starts a host on them (with a
# local nats-server when none runs on 127.0.0.1:4222), and sends a few
# sample requests through NATS. The host keeps running until Ctrl-C
# (pass --once to stop after the samples).
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/setup

echo "==> building the example plugins (wasm32-wasip2)"
cargo build -q --target wasm32-wasip2 --profile guest --target-dir target/guests \
    -p header-injector -p authz -p body-redactor -p access-logger
echo "==> building natsplug"
cargo build -q -p natsplug-cli

plugins=target/demo-plugins
mkdir -p "$plugins"
for name in header-injector authz body-redactor access-logger; do
    cp "target/guests/wasm32-wasip2/guest/${name//-/_}.wasm" "$plugins/$name.wasm"
done
cat > target/demo.toml <<TOML
[plugins]
dir = "$plugins"

[plugin.authz.config]
token = "s3cret"
public_paths = "/health"
TOML

natsplug=target/debug/natsplug
"$natsplug" up --config target/demo.toml &
host=$!
trap 'kill -TERM $host 2>/dev/null || true; wait $host 2>/dev/null || true' EXIT

# Wait for the host to serve the header injector.
for _ in $(seq 1 100); do
    if "$natsplug" call header-injector request_filter >/dev/null 2>&1; then break; fi
    sleep 0.1
done

show() { echo; echo "$ natsplug call $(printf '%q ' "$@")"; "$natsplug" call "$@" || true; }
show header-injector request_filter --method GET --path /hello
show authz request_filter --path /admin
show authz request_filter --path /admin -H 'authorization: Bearer s3cret'
show body-redactor response_body_filter --body 'my secret is safe'
show access-logger logging --method GET --path /hello --status 200

if [ "${1:-}" = "--once" ]; then
    exit 0
fi
echo
echo "The host serves target/demo-plugins; drop .wasm files there to add plugins."
echo "Press Ctrl-C to stop."
wait $host

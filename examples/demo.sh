#!/usr/bin/env bash
# Builds the example plugins and natsplug, starts a host on them (with a
# local nats-server when none runs on 127.0.0.1:4222), sends a few sample
# requests through NATS, then puts the plugins in front of a small echo
# service with `natsplug gateway` and sends HTTP requests through it with
# curl. Everything keeps running until Ctrl-C (pass --once to stop after
# the samples). Ports: GATEWAY_PORT (8080) and UPSTREAM_PORT (9000).
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
gateway_port=${GATEWAY_PORT:-8080}
upstream_port=${UPSTREAM_PORT:-9000}
pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
"$natsplug" up --config target/demo.toml &
host=$!
pids+=("$host")

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

echo
echo "==> the gateway: authz, header-injector and body-redactor in front of an echo service"
python3 examples/echo-upstream.py "$upstream_port" &
pids+=($!)
RUST_LOG=warn "$natsplug" gateway --listen "127.0.0.1:$gateway_port" \
    --upstream "http://127.0.0.1:$upstream_port" \
    --plugins authz,header-injector,body-redactor,access-logger &
pids+=($!)
for _ in $(seq 1 100); do
    # /health is public (authz) and answered by the echo service once both run.
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$gateway_port/health")" = 200 ]; then break; fi
    sleep 0.1
done

fetch() { echo; echo "$ curl $(printf '%q ' "$@")"; curl -sS "$@" || true; echo; }
fetch -i "http://127.0.0.1:$gateway_port/admin"
fetch "http://127.0.0.1:$gateway_port/admin" -H 'authorization: Bearer s3cret'

if [ "${1:-}" = "--once" ]; then
    exit 0
fi
echo
echo "The host serves target/demo-plugins; drop .wasm files there to add plugins."
echo "The gateway listens on http://127.0.0.1:$gateway_port. Press Ctrl-C to stop."
wait "$host"

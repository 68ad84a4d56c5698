#!/usr/bin/env bash
# Builds the example plugins and natsplug, starts a host on them (with a
# local nats-server when none runs on the NATS port), sends a few sample
# requests through NATS, then puts the plugins in front of a small echo
# service with `natsplug gateway` and sends HTTP requests through it with
# curl. Everything keeps running until Ctrl-C, which stops all it started.
#
#   examples/demo.sh          # the demo, running until Ctrl-C
#   examples/demo.sh --once   # a check: sends the samples, verifies the
#                             # answers (one PASS/FAIL line each), stops
#                             # everything, exits non-zero if one failed
#
# Environment variables (all optional):
#   GATEWAY_PORT   the gateway's port on 127.0.0.1 (default 8080)
#   UPSTREAM_PORT  the echo service's port on 127.0.0.1 (default 9000)
#   NATS_PORT      the local NATS port (default 4222): a server already
#                  listening there is used, otherwise one is started there
#   NATS_URL       a NATS server to use instead, e.g. nats://10.0.0.5:4222
#                  (default: NATSPLUG_NATS_URL when set); none is started
#   NATS_SERVER    the nats-server binary to start (default: the one on PATH)
#   DEMO_TIMEOUT   seconds to wait for each service to get ready (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
case "${1:-}" in
    --once) once=true ;;
    "") ;;
    *) echo "usage: $0 [--once]" >&2; exit 2 ;;
esac

gateway_port=${GATEWAY_PORT:-8080}
upstream_port=${UPSTREAM_PORT:-9000}
nats_port=${NATS_PORT:-4222}
nats_url=${NATS_URL:-${NATSPLUG_NATS_URL:-}}
nats_server=${NATS_SERVER:-nats-server}
timeout=${DEMO_TIMEOUT:-60}

bash .ci/setup

echo "==> building the example plugins (wasm32-wasip2)"
# The same target directory, profile and packages as the test suite's
# build (tests/support/build.rs), so after the tests this is a no-op.
cargo build -q --target wasm32-wasip2 --profile guest --target-dir target/guests \
    -p header-injector -p authz -p body-redactor -p access-logger
echo "==> building natsplug"
cargo build -q -p natsplug-cli --bin natsplug
natsplug=${CARGO_TARGET_DIR:-target}/debug/natsplug

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

# Whether something accepts TCP connections on 127.0.0.1:PORT.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Everything started here is stopped on exit, whatever the reason: the
# services first (the host drains its replies over NATS), then nats-server.
pids=()
nats_pid=
work=
stop() {
    local deadline=$((SECONDS + 10)) pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    stop ${pids[@]+"${pids[@]}"}
    if [ -n "$nats_pid" ]; then stop "$nats_pid"; fi
    if [ -n "$work" ]; then rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
# The nats-server's store and log, and the gateway's replies.
work=$(mktemp -d "${TMPDIR:-/tmp}/natsplug-demo.XXXXXX")

fail() { echo "demo: $*" >&2; exit 1; }
# wait_until WHAT PID LOG COMMAND...: run COMMAND until it succeeds, for at
# most DEMO_TIMEOUT seconds; fail early when the process PID has exited. On
# failure, show the file LOG (when not empty): the process's output.
wait_until() {
    local what=$1 pid=$2 log=$3 deadline=$((SECONDS + timeout)) problem= status
    shift 3
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" && status=0 || status=$?
            problem="exited (status $status) before it was ready"
        elif [ "$SECONDS" -ge "$deadline" ]; then
            problem="was not ready within $timeout s (DEMO_TIMEOUT)"
        else
            sleep 0.2
            continue
        fi
        if [ -n "$log" ]; then cat "$log" >&2; fi
        fail "$what $problem"
    done
}

for port in "$gateway_port" "$upstream_port"; do
    if listening "$port"; then
        fail "127.0.0.1:$port is already in use; choose other ports with GATEWAY_PORT and UPSTREAM_PORT"
    fi
done

if [ -z "$nats_url" ]; then
    nats_url=nats://127.0.0.1:$nats_port
    if listening "$nats_port"; then
        echo "==> using the nats-server on $nats_url"
    else
        echo "==> starting a nats-server on $nats_url"
        "$nats_server" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/jetstream" >"$work/nats.log" 2>&1 &
        nats_pid=$!
        wait_until "nats-server (on port $nats_port)" "$nats_pid" "$work/nats.log" \
            listening "$nats_port"
    fi
fi
# `natsplug up`, `call` and `gateway` all read it.
export NATSPLUG_NATS_URL=$nats_url

"$natsplug" up --config target/demo.toml &
host=$!
pids+=("$host")
# Ready once it serves every plugin.
serving() {
    "$natsplug" call header-injector request_filter &&
        "$natsplug" call authz request_filter &&
        "$natsplug" call body-redactor response_body_filter &&
        "$natsplug" call access-logger logging
} >/dev/null 2>&1
wait_until "natsplug up (serving the 4 plugins)" "$host" "" serving

failures=0
passes=0
# check WHAT EXPECTED ACTUAL [REGEX]: one line, PASS when ACTUAL is
# EXPECTED (or matches the extended regular expression REGEX).
check() {
    if { [ $# -eq 3 ] && [ "$2" = "$3" ]; } || { [ $# -eq 4 ] && [[ $3 =~ $4 ]]; }; then
        passes=$((passes + 1))
        echo "PASS  $1: expected $2, got $3"
    else
        failures=$((failures + 1))
        echo "FAIL  $1: expected $2, got ${3:-(nothing)}"
    fi
}

# show LINE ARGS...: `natsplug call ARGS`, printed; with --once, a check
# that the reply has the line LINE.
show() {
    local expected=$1 reply status=0
    shift
    echo; echo "$ natsplug call $(printf '%q ' "$@")"
    reply=$("$natsplug" call "$@" 2>&1) || status=$?
    printf '%s\n' "$reply"
    if $once; then
        if [ "$status" -eq 0 ] && grep -qxF -- "$expected" <<<"$reply"; then
            reply="a line '$expected'"
        else
            reply="exit status $status and: $(paste -sd '|' <<<"$reply")"
        fi
        check "natsplug call $*" "a line '$expected'" "$reply"
    fi
}
show 'request header set: x-plugin: header-injector' \
    header-injector request_filter --method GET --path /hello
show 'status: 401' authz request_filter --path /admin
show 'request header removed: authorization' \
    authz request_filter --path /admin -H 'authorization: Bearer s3cret'
show 'body: my ****** is safe' body-redactor response_body_filter --body 'my secret is safe'
show 'action: next' access-logger logging --method GET --path /hello --status 200

echo
echo "==> the gateway: authz, header-injector and body-redactor in front of an echo service"
python3 examples/echo-upstream.py "$upstream_port" &
pids+=($!)
# The check gives each plugin call 2 s instead of the default 200 ms, so a
# busy machine (CI) makes no 504.
budget=()
if $once; then budget=(--timeout-ms 2000); fi
RUST_LOG=warn "$natsplug" gateway --listen "127.0.0.1:$gateway_port" \
    --upstream "http://127.0.0.1:$upstream_port" ${budget[@]+"${budget[@]}"} \
    --plugins authz,header-injector,body-redactor,access-logger &
gateway=$!
pids+=("$gateway")
# /health is public (authz) and answered by the echo service once both run.
health() {
    [ "$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$gateway_port/health")" = 200 ]
}
wait_until "natsplug gateway (GET /health through it)" "$gateway" "" health

replies=$work
# fetch NAME CURL-ARGS...: the status in $replies/NAME.status, the header
# in NAME.head and the body in NAME.body.
fetch() {
    local name=$1
    shift
    curl -sS --max-time 10 -D "$replies/$name.head" -o "$replies/$name.body" \
        -w '%{http_code}' "$@" >"$replies/$name.status" || true
    touch "$replies/$name.head" "$replies/$name.body"
}

url=http://127.0.0.1:$gateway_port/admin
echo; echo "$ curl -i $url"
fetch denied "$url"
cat "$replies/denied.head" "$replies/denied.body"; echo
echo; echo "$ curl $url -H 'authorization: Bearer s3cret'"
fetch allowed "$url" -H 'authorization: Bearer s3cret'
cat "$replies/allowed.body"; echo

if $once; then
    echo
    echo "==> checks"
    # field NAME KEY: from the JSON body of reply NAME, the value of KEY, or
    # of the header KEY in its "headers" (what the upstream saw, echoed),
    # or with KEY "after" the text after the JSON.
    field() {
        python3 - "$replies/$1.body" "$2" <<'PY'
import json, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
key = sys.argv[2]
try:
    seen, end = json.JSONDecoder().raw_decode(text)
except ValueError:
    seen = None
if not isinstance(seen, dict):
    print("a body that is not a JSON object: %r" % text[:200])
    sys.exit()
headers = {k.lower(): v for k, v in seen.get("headers", {}).items()}
if key == "after":
    print(text[end:].strip())
elif key in seen:
    print(seen[key])
else:
    print(headers.get(key, "no %s" % key))
PY
    }
    host_port=127.0.0.1:$gateway_port
    check "GET /admin without a token" "status 401" "status $(cat "$replies/denied.status")"
    check "the 401's body (authz's JSON)" "error unauthorized" "error $(field denied error)"
    check "GET /admin with the token" "status 200" "status $(cat "$replies/allowed.status")"
    check "the path the upstream got" "/admin" "$(field allowed path)"
    check "the upstream's x-plugin (header-injector)" "header-injector" "$(field allowed x-plugin)"
    check "the upstream's x-request-id (header-injector)" "a request id" \
        "$(field allowed x-request-id)" '^[0-9A-Za-z._:-]+$'
    check "the upstream's x-forwarded-for" "127.0.0.1" "$(field allowed x-forwarded-for)"
    check "the upstream's x-forwarded-host" "$host_port" "$(field allowed x-forwarded-host)"
    check "the upstream's x-forwarded-proto" "http" "$(field allowed x-forwarded-proto)"
    check "the upstream's forwarded" "for=127.0.0.1;host=\"$host_port\";proto=http" "$(field allowed forwarded)"
    check "the upstream's via" "1.1 natsplug" "$(field allowed via)"
    check "the body's secret (body-redactor)" "the ****** is 42" "$(field allowed after)"
    echo
    if [ "$failures" -gt 0 ]; then
        echo "demo: $failures of $((passes + failures)) checks FAILED"
        exit 1
    fi
    echo "demo: all $passes checks passed"
    exit 0
fi
echo
echo "The host serves target/demo-plugins; drop .wasm files there to add plugins."
if [ "$nats_url" != nats://127.0.0.1:4222 ]; then
    echo "NATS: $nats_url (set NATSPLUG_NATS_URL=$nats_url for natsplug call)."
fi
echo "The gateway listens on http://127.0.0.1:$gateway_port. Press Ctrl-C to stop."
wait "$host"

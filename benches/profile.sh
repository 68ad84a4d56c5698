#!/usr/bin/env bash
# Where a request's cost goes in the natsplug host: a CPU profile of
# `natsplug up` serving the header-injector example under load, broken
# down by component.
#
# What it does:
#   1. builds the end-to-end benchmark (its build script builds the example
#      plugins) and the `natsplug` binary, release profile;
#   2. starts a nats-server on a free local port and `natsplug up` serving
#      only the header injector (prefix `bench.host`, as
#      `benches/end_to_end.rs` starts it);
#   3. runs the benchmark's load-only mode (`end_to_end --drive`: the same
#      request, 8 headers and a small body) at concurrency 64 for
#      PROFILE_SECONDS, and meanwhile samples the host with `perf record -g`
#      (perf's default event; cpu-clock where the CPU has no hardware
#      counters, as in most virtual machines);
#   4. prints the load's figures (req/s, the host's CPU µs per request over
#      the load's window and, where hardware counters exist, its
#      instructions per request), then the share of the host's samples per
#      component, with µs per request (CPU µs/req times the share), the
#      split per thread, and the top functions of each component.
#
# A sample is charged to the function it landed in (self time, as
# `perf report --no-children --sort sym` counts it), then to a component by
# that function's name, first match in the lists in the Python part below:
#   wasmtime call + canonical ABI   wasmtime*, cranelift*, natsplug::dispatch,
#                                   ::plugin, ::bindings, ::sandbox, and the
#                                   trampolines wasmtime generates into the
#                                   compiled plugin
#   MessagePack decode/encode       natsplug_protocol, rmp, rmp_serde, serde,
#                                   natsplug::decode, natsplug::reply
#   executor hand-off               natsplug::executor, crossbeam, tokio::sync,
#                                   tokio's scheduler/park/task/blocking pool,
#                                   parking_lot, std::thread, std's mutexes,
#                                   futex and pthread wrappers, libc syscall()
#   NATS client and I/O             async_nats, tokio's net/io/driver, mio,
#                                   bytes, memchr, nuid, tokio_util, libc's
#                                   epoll_wait/recv/send/writev wrappers
#   allocation                      malloc/free/realloc/calloc and glibc's
#                                   internals (_int_*, tcache, arenas),
#                                   __rust_alloc/dealloc, RawVec growth
#   memcpy/memmove/memset           libc's (their callers are all of the above)
#   clocks, metrics, hashing        clock_gettime, std::time, prometheus,
#                                   natsplug::metrics/stats, core::hash
#   tokio timers and other runtime  the rest of tokio::
#   natsplug, other                 the rest of natsplug::
#   guest code (wasm functions)     the compiled plugin's own functions; found
#                                   by address: the executable anonymous
#                                   mapping of the compilation's .text size,
#                                   named from the symbols of the ELF object
#                                   in the host's compiled-artifact cache
#   kernel: ...                     every kernel sample, by the functions of
#                                   its kernel call chain (reliable: the kernel
#                                   keeps frame pointers) and the libc call
#                                   under it: futex (and a thread preempted
#                                   leaving a futex call), eventfd (waking
#                                   tokio's I/O thread), epoll, socket writes
#                                   (on loopback they include the delivery to
#                                   the receiving socket), socket reads, page
#                                   faults, other syscalls, interrupts
#   other                           everything else
# The user-space call chains are not used: the release build has no frame
# pointers. Inlined code counts where it was inlined (e.g. a msgpack writer
# inlined into natsplug::reply counts as MessagePack, tokio I/O inlined
# into async_nats as the NATS client), so the split is crude but says where
# the samples are.
#
# Usage: benches/profile.sh   (from anywhere; builds in the workspace)
# Environment:
#   NATS_SERVER          nats-server binary (default: nats-server on PATH)
#   CARGO_TARGET_DIR     cargo's target directory (default: target/)
#   PROFILE_SECONDS      seconds of load under the profiler (default 10)
#   PROFILE_CONCURRENCY  requests in flight (default 64)
#   PROFILE_KEEP         a directory to keep perf.data, the samples and the
#                        logs in (default: a temporary one, removed)
#   PERF                 the perf binary (default: perf; Debian's linux-perf)
#   PROFILE_TOOL         perf (default) or callgrind
#
# PROFILE_TOOL=callgrind counts instructions instead of sampling time, a
# figure that holds across machines (and on virtual machines without
# hardware counters): the host runs under `valgrind --tool=callgrind`
# with a small instance pool (valgrind cannot reserve the default pool's
# address space) and two plugin workers; its counters are zeroed right
# before the load and dumped right after it (`callgrind_control`), and the
# requests it answered meanwhile are read from its /metrics. It prints the
# host's instructions per request at PROFILE_CONCURRENCY, and the
# inclusive instructions per request of the parts of the call path: the
# call (`natsplug::dispatch::run`), within it decoding the phase request,
# wasmtime's component call (within it lowering the arguments into the
# guest and lifting its decision), the header buffer of contract 0.2 and
# encoding the reply, and the NATS client's reading, parsing and writing.
# Valgrind runs the host about 50 times slower, so the load's rate is no
# guide; the counts are.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${PROFILE_SECONDS:-10}
concurrency=${PROFILE_CONCURRENCY:-64}
perf=${PERF:-perf}
tool=${PROFILE_TOOL:-perf}
nats_server=${NATS_SERVER:-nats-server}

case "$tool" in
    perf)
        command -v "$perf" >/dev/null ||
            { echo "profile: \`$perf\` not found (Debian: apt-get install linux-perf; or set PERF)" >&2; exit 1; }
        ;;
    callgrind)
        for needed in valgrind callgrind_control callgrind_annotate curl; do
            command -v "$needed" >/dev/null ||
                { echo "profile: \`$needed\` not found (Debian: apt-get install valgrind curl)" >&2; exit 1; }
        done
        ;;
    *) echo "profile: PROFILE_TOOL is perf or callgrind, not \`$tool\`" >&2; exit 1 ;;
esac
command -v "$nats_server" >/dev/null ||
    { echo "profile: \`$nats_server\` not found (set NATS_SERVER)" >&2; exit 1; }

cd "$root"
echo "building (release)..." >&2
bench=$(cargo bench -p natsplug-suite --bench end_to_end --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "end_to_end" and m.get("executable"):
        print(m["executable"])')
cargo build --release --quiet -p natsplug-cli --bin natsplug
target=${CARGO_TARGET_DIR:-$root/target}
natsplug=$target/release/natsplug
plugin=$root/target/guests/wasm32-wasip2/guest/header_injector.wasm
for file in "$bench" "$natsplug" "$plugin"; do
    [ -f "$file" ] || { echo "profile: the build did not produce $file" >&2; exit 1; }
done

work=${PROFILE_KEEP:-}
if [ -z "$work" ]; then
    work=$(mktemp -d)
    keep=false
else
    mkdir -p "$work"
    keep=true
fi
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    $keep || rm -rf "$work"
}
trap cleanup EXIT

# nats-server on a free port: it writes the port it took to a ports file.
mkdir -p "$work/nats"
"$nats_server" -a 127.0.0.1 -p -1 --ports_file_dir "$work/nats" >"$work/nats/log" 2>&1 &
pids+=($!)
nats_pid=$!
url=
for _ in $(seq 100); do
    ports=$work/nats/nats-server_$nats_pid.ports
    if [ -s "$ports" ]; then
        url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nats"][0])' "$ports")
        break
    fi
    sleep 0.1
done
[ -n "$url" ] || { echo "profile: nats-server did not start; its log:" >&2; cat "$work/nats/log" >&2; exit 1; }

# The host, serving the header injector only.
mkdir -p "$work/plugins" "$work/cache"
cp "$plugin" "$work/plugins/header-injector.wasm"
mkfifo "$work/host.out"
under=()
extra=()
ready_seconds=60
if [ "$tool" = callgrind ]; then
    printf '[runtime]\npool_instances = 4\nworkers = 2\n' >"$work/host.toml"
    monitor=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    under=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out")
    extra=(--config "$work/host.toml" --monitor "$monitor")
    ready_seconds=300
fi
RUST_LOG=warn "${under[@]}" "$natsplug" up --nats "$url" --prefix bench.host --no-watch \
    --plugins "$work/plugins" --cache-dir "$work/cache" "${extra[@]}" >"$work/host.out" 2>"$work/host.log" &
pids+=($!)
host_pid=$!
exec 3<"$work/host.out"
if ! read -r -t "$ready_seconds" ready <&3 || [[ "$ready" != "natsplug ready"* ]]; then
    echo "profile: the host did not become ready; its log:" >&2
    cat "$work/host.log" >&2
    exit 1
fi
# Keep draining the host's stdout.
cat <&3 >/dev/null &
pids+=($!)

subject=bench.host.header-injector.request_filter

if [ "$tool" = callgrind ]; then
    answered() {
        curl -s "http://$monitor/metrics" |
            awk '/^natsplug_requests_total/ { sum += $NF } END { printf "%d\n", sum }'
    }
    echo "host pid $host_pid on $url under callgrind; $seconds s at concurrency $concurrency" >&2
    before=$(answered)
    callgrind_control -z "$host_pid" >/dev/null
    "$bench" --drive "$url" "$subject" "$host_pid" --concurrency "$concurrency" --seconds "$seconds" \
        >"$work/drive.json" 2>"$work/drive.log" || { cat "$work/drive.log" >&2; exit 1; }
    callgrind_control -d "$host_pid" >/dev/null
    after=$(answered)
    dump=$(ls "$work"/callgrind.out.* 2>/dev/null | head -n 1)
    [ -s "$dump" ] || { echo "profile: callgrind wrote no dump; its log:" >&2; cat "$work/host.log" >&2; exit 1; }
    callgrind_annotate --inclusive=yes --threshold=100 "$dump" >"$work/inclusive.txt" 2>/dev/null
    python3 - "$work" "$((after - before))" "$concurrency" <<'PYTHON'
import re, sys

work, requests, concurrency = sys.argv[1], int(sys.argv[2]), sys.argv[3]
inclusive = {}
total = None
for line in open(f"{work}/inclusive.txt"):
    m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)\s*$", line)
    if not m:
        continue
    count, name = int(m.group(1).replace(",", "")), m.group(2)
    if "PROGRAM TOTALS" in name:
        total = count
        continue
    name = name[len("???:"):] if name.startswith("???:") else name
    name = re.sub(r"\s*\[[^\]]*\]$", "", name)
    inclusive[name] = max(inclusive.get(name, 0), count)

def find(pattern):
    """The largest inclusive count of a function whose name matches."""
    counts = [c for n, c in inclusive.items() if re.search(pattern, n)]
    return max(counts) if counts else None

if not requests or total is None:
    sys.exit(f"profile: nothing to divide by ({requests} requests answered, total {total})")
print(f"host instructions per request at concurrency {concurrency}: {total / requests:,.0f} "
      f"({total:,} instructions, {requests} requests answered in the window)")
print()
parts = [
    ("the call: decode, guest call, checks, encode", r"^natsplug::dispatch::run$"),
    ("  decoding the phase request", r"^natsplug_protocol::decode::decode_request_view$"),
    ("  wasmtime's component call", r"^wasmtime::runtime::component::func::typed::TypedFunc<Params,Return>::call$"),
    ("    lowering request and context into the guest", r"^<\(A1,A2\) as wasmtime::runtime::component::func::typed::Lower>::linear_lower_to_memory$"),
    ("    lifting the decision", r"^wasmtime::runtime::component::func::Func::with_lift_context$"),
    ("  the header buffer (contract 0.2)", r"^natsplug::bindings::v0_2::encode_fields$"),
    ("  encoding the reply", r"^natsplug_protocol::encode::encode_reply$"),
    ("the NATS client: reading, parsing, writing", r"^<async_nats::ConnectionHandler::process::\{\{closure\}\}::ProcessFut as core::future::future::Future>::poll$"),
    ("handing replies to the NATS client", r"^natsplug::reply::publish::\{\{closure\}\}$"),
]
print(f"{'part (inclusive)':<52} {'instr/req':>10} {'share':>7}")
for label, pattern in parts:
    count = find(pattern)
    if count is None:
        print(f"{label:<52} {'-':>10}")
    else:
        print(f"{label:<52} {count / requests:>10,.0f} {100 * count / total:>6.1f}%")
PYTHON
    exit 0
fi

echo "host pid $host_pid on $url; $seconds s at concurrency $concurrency under perf record" >&2
"$perf" record -g -F 2000 -p "$host_pid" -o "$work/perf.data" 2>"$work/perf-record.log" &
perf_pid=$!
pids+=($perf_pid)
sleep 0.5
"$bench" --drive "$url" "$subject" "$host_pid" --concurrency "$concurrency" --seconds "$seconds" \
    >"$work/drive.json" 2>"$work/drive.log" || { cat "$work/drive.log" >&2; exit 1; }
kill -INT "$perf_pid"
wait "$perf_pid" || true
if [ ! -s "$work/perf.data" ]; then
    echo "profile: perf record wrote no profile:" >&2
    cat "$work/perf-record.log" >&2
    exit 1
fi

# Where the compiled plugin's code lies: the executable anonymous mappings
# (wasmtime copies a cached compilation into anonymous memory and makes its
# text executable in place) and the symbols of that compilation, an ELF
# object inside the cache entry.
cat "/proc/$host_pid/maps" >"$work/maps"
"$perf" evlist -i "$work/perf.data" 2>/dev/null | head -n 1 >"$work/event"
"$perf" script -i "$work/perf.data" -F comm,tid,ip,sym,dso 2>/dev/null >"$work/samples.txt"
cwasm=$(find "$work/cache" -name '*.cwasm' | head -n 1)
: >"$work/jit-symbols.txt"
if [ -n "$cwasm" ]; then
    python3 -c '
import sys
data = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(data[data.find(b"\x7fELF"):])' "$cwasm" "$work/plugin.elf"
    nm -n "$work/plugin.elf" >"$work/jit-symbols.txt" 2>/dev/null || true
    readelf -S -W "$work/plugin.elf" 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == ".text") print $(i + 4) }' >"$work/jit-text-size"
fi

python3 - "$work" <<'PYTHON'
import bisect, json, os, re, sys
from collections import Counter, defaultdict

work = sys.argv[1]
drive = json.load(open(f"{work}/drive.json"))
drive_log = open(f"{work}/drive.log").read().strip()

# User-space samples: the sampled function's name; (component, substrings),
# first match wins, so the specific patterns come first.
USER = [
    ("wasmtime call + canonical ABI", [
        "wasmtime", "natsplug::dispatch", "natsplug::plugin", "natsplug::bindings",
        "natsplug::sandbox", "cranelift", "wasm_to_host", "trampoline"]),
    ("MessagePack decode/encode", [
        "natsplug_protocol", "rmp::", "rmp_serde", "serde", "natsplug::decode", "natsplug::reply"]),
    ("executor hand-off", [
        "natsplug::executor", "crossbeam", "tokio::sync", "tokio::runtime::park",
        "tokio::runtime::scheduler", "tokio::runtime::task", "tokio::runtime::context",
        "tokio::runtime::blocking", "tokio::loom", "parking_lot", "std::thread",
        "std::sys::sync", "futex", "pthread_", "__lll_", "syscall"]),
    ("NATS client and I/O", [
        "async_nats", "tokio::net", "tokio::io", "tokio::runtime::io", "tokio::runtime::driver",
        "mio::", "bytes::", "memchr", "nuid", "tokio_util", "epoll_wait", "__libc_recv",
        "__libc_send", "writev", "__libc_write", "__libc_read"]),
    ("allocation", [
        "malloc", "free", "realloc", "calloc", "_int_", "tcache", "arena_", "unlink_chunk",
        "__rust_alloc", "__rust_dealloc", "__rust_realloc", "alloc::raw_vec", "RawVec",
        "alloc::alloc"]),
    ("memcpy/memmove/memset", ["memcpy", "memmove", "memset", "memcmp"]),
    ("clocks, metrics, hashing", [
        "clock_gettime", "std::time", "prometheus", "natsplug::metrics", "natsplug::stats",
        "core::hash", "hashbrown"]),
    ("tokio timers and other runtime", ["tokio::"]),
    ("natsplug, other", ["natsplug::"]),
]
# Kernel samples: what the kernel was doing, from the sample's kernel call
# chain (the kernel keeps frame pointers) and the first two user-space
# frames under it (the libc call that entered the kernel and its caller,
# marked "user:"): a thread preempted on its way out of a futex wake is
# charged to the futex. (component, substrings of any of those frames),
# first match wins.
KERNEL = [
    ("kernel: futex, and the switches it causes", ["futex", "user:syscall", "std::sys::pal"]),
    ("kernel: eventfd (waking the I/O thread)", ["eventfd", "Waker::wake", "user:__GI___libc_write"]),
    ("kernel: epoll", ["epoll"]),
    ("kernel: socket writes, loopback delivery", [
        "tcp_sendmsg", "sock_write_iter", "sock_sendmsg", "writev"]),
    ("kernel: socket reads", ["tcp_recvmsg", "sock_read_iter", "sock_recvmsg", "recv"]),
    ("kernel: page faults", ["page_fault", "handle_mm_fault"]),
    ("kernel: other syscalls", ["do_syscall_64"]),
    ("kernel: interrupts, preemption, other", [""]),
]
GUEST = "guest code (wasm functions)"

# The compiled plugin's text: the executable anonymous mapping of its size.
symbols, regions = [], []
if os.path.getsize(f"{work}/jit-symbols.txt"):
    for line in open(f"{work}/jit-symbols.txt"):
        parts = line.split(maxsplit=2)
        if len(parts) == 3:
            symbols.append((int(parts[0], 16), parts[2].strip()))
    text_size = int(open(f"{work}/jit-text-size").read().strip() or "0", 16)
    for line in open(f"{work}/maps"):
        fields = line.split()
        start, end = (int(a, 16) for a in fields[0].split("-"))
        anonymous = len(fields) < 6
        if anonymous and fields[1].startswith("r-x") and end - start == (text_size + 4095) // 4096 * 4096:
            regions.append((start, end))
offsets = [o for o, _ in symbols]

def jit_symbol(ip):
    for start, end in regions:
        if start <= ip < end:
            i = bisect.bisect_right(offsets, ip - start) - 1
            if i >= 0:
                return symbols[i][1]
    return None

frame = re.compile(r"^\s*([0-9a-f]+) (.*) \((.*)\)$")
shares, tops, threads = Counter(), defaultdict(Counter), defaultdict(Counter)
total = 0
for block in open(f"{work}/samples.txt").read().split("\n\n"):
    lines = [l for l in block.split("\n") if l.strip()]
    if len(lines) < 2:
        continue
    thread = re.sub(r"[\d\s]+$", "", lines[0]).strip()
    frames = [m.groups() for m in map(frame.match, lines[1:]) if m]
    if not frames:
        continue
    total += 1
    ip, symbol, dso = frames[0]
    if dso == "[kernel.kallsyms]":
        chain = [f[1] for f in frames if f[2] == "[kernel.kallsyms]"]
        chain += [f"user:{f[1]}" for f in frames if f[2] != "[kernel.kallsyms]"][:2]
        component = next(c for c, pats in KERNEL if any(p in f for f in chain for p in pats))
        name = symbol
    elif dso.startswith("/tmp/perf-") or dso in ("[unknown]", "[JIT]"):
        name = jit_symbol(int(ip, 16)) or "[JIT code]"
        component = USER[0][0] if "trampoline" in name else GUEST
        name = f"{name} (plugin, compiled)"
    else:
        component = next((c for c, pats in USER if any(p in symbol for p in pats)), "other")
        name = f"{symbol} ({os.path.basename(dso)})"
    shares[component] += 1
    tops[component][name] += 1
    threads[thread][component] += 1

cpu = drive["cpu_us_per_request"]
instructions = drive.get("instructions_per_request")
print(f"load: {drive['throughput']:.0f} req/s at concurrency {drive['concurrency']}, "
      f"p50 {drive['p50_us']:.0f} µs, p99 {drive['p99_us']:.0f} µs, {drive['requests']} requests")
print(f"host CPU per request: {cpu:.2f} µs (user+system, /proc, over the load's window)")
if instructions is not None:
    print(f"host instructions per request: {instructions:.0f}")
else:
    print(next((l for l in drive_log.splitlines() if l.startswith("instructions")), "instructions: not counted"))
event = open(f"{work}/event").read().strip() or "?"
print(f"host samples: {total} of {event}; compiled plugin text: {len(regions)} mapping(s), {len(symbols)} symbols")
print()
print(f"{'component':<44} {'samples':>8} {'share':>7} {'≈ µs/req':>9}")
kernel_total = sum(v for c, v in shares.items() if c.startswith("kernel"))
for component, count in sorted(shares.items(), key=lambda kv: -kv[1]):
    print(f"{component:<44} {count:>8} {100 * count / total:>6.1f}% {cpu * count / total:>9.2f}")
print(f"{'(kernel, all)':<44} {kernel_total:>8} {100 * kernel_total / total:>6.1f}% {cpu * kernel_total / total:>9.2f}")
print()
print("share of samples by thread:")
for thread, counts in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
    n = sum(counts.values())
    top = ", ".join(f"{c} {100 * v / n:.0f}%" for c, v in counts.most_common(4))
    print(f"  {thread:<18} {100 * n / total:5.1f}%  ({top})")
print()
print("top functions of each component (self samples, % of all):")
for component, _ in sorted(shares.items(), key=lambda kv: -kv[1]):
    print(f"{component}:")
    for name, count in tops[component].most_common(6):
        print(f"  {100 * count / total:5.2f}%  {name[:120]}")
PYTHON
$keep && echo "perf.data, samples.txt and the rest kept in $work" >&2
exit 0

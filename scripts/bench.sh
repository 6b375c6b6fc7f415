#!/usr/bin/env bash
# The benchmark suite of issue 5, self-contained: builds release once, then runs
#   1. the criterion microbenchmarks (bench/benches/micro.rs) with a reduced measurement time,
#   2. `threadwarden-bench loadgen`: every load scenario against the sidecar and the echo baseline,
#      interleaved over 3 runs on fresh child processes, plus the scale run (10,000 streams,
#      1,000,000 threads),
#   3. the memory benchmark (bench/examples/membench.rs): RSS per thread at 100k, 1M and 2M threads,
#      and under eviction at a 1M capacity,
# and writes BENCHMARKS.md-ready Markdown to $OUT/BENCHMARKS.generated.md (also printed).
#
#   scripts/bench.sh              # the whole suite (about 10 minutes on 2 cores, after the build)
#   scripts/bench.sh --quick      # smoke: every part, tiny and short (about a minute)
#   scripts/bench.sh --profile    # callgrind profiles of the request path and of both servers
#                                 # under load (valgrind needed); top costs to $OUT/profile/
#
# Knobs (environment): OUT (default target/bench), RUNS (3), DURATION (5s), WARMUP (1s),
# CRITERION_TIME (2, seconds of measurement per microbenchmark), CARGO_BUILD_JOBS.
# The binaries are copied to $OUT before running, so a concurrent rebuild of target/ cannot
# swap them mid-run. Exits non-zero if any part fails (a load run with errors fails).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
case "${1:-}" in
    --quick) MODE=quick ;;
    --profile) MODE=profile ;;
    "") ;;
    *) echo "usage: $0 [--quick|--profile]" >&2; exit 2 ;;
esac
OUT=${OUT:-target/bench}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
CRITERION_TIME=${CRITERION_TIME:-2}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

step() { printf '\n==> %s\n' "$*" >&2; }

step "release build (sidecar, memory benchmark, profile driver, microbenchmarks)"
cargo build --release --locked -p threadwarden --bin threadwarden
cargo build --release --locked -p threadwarden-bench --bin threadwarden-bench --example membench --example profile_path
cargo bench --locked -p threadwarden-bench --bench micro --no-run
cp target/release/threadwarden target/release/threadwarden-bench target/release/examples/membench \
    target/release/examples/profile_path "$OUT/"

if [ "$MODE" = profile ]; then
    command -v valgrind >/dev/null || { echo "valgrind is needed for --profile" >&2; exit 1; }
    P="$OUT/profile"
    mkdir -p "$P"
    step "callgrind: the in-process request path (decode, Engine::decide, encode), 20,000 events"
    valgrind --tool=callgrind --toggle-collect='*drive_events*' --callgrind-out-file="$P/path.out" \
        "$OUT/profile_path" 20000 20000 2>"$P/path.log"
    callgrind_annotate --inclusive=yes "$P/path.out" >"$P/path.inclusive.txt"
    callgrind_annotate --inclusive=no "$P/path.out" >"$P/path.self.txt"
    # Each server under callgrind (instrumented only while the load runs), driven by loadgen.
    profile_server() { # name, scenario, extra loadgen flags...
        local name=$1 scenario=$2; shift 2
        local log="$P/$name.log" server_args
        if [[ $name == sidecar* ]]; then
            server_args=("$OUT/threadwarden" serve --listen 127.0.0.1:0 --decision-log off)
        else
            server_args=("$OUT/threadwarden-bench" echo-server --listen 127.0.0.1:0)
        fi
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$P/$name.out" \
            "${server_args[@]}" >"$log" 2>"$P/$name.valgrind.log" &
        local pid=$! addr=""
        for _ in $(seq 1 600); do
            addr=$(grep -o '"listen":"[^"]*"' "$log" | head -1 | cut -d'"' -f4 || true)
            [ -n "$addr" ] && break
            sleep 0.1
        done
        [ -n "$addr" ] || { echo "$name did not start under valgrind" >&2; kill "$pid"; exit 1; }
        callgrind_control -i on "$pid" >/dev/null
        "$OUT/threadwarden-bench" loadgen --target "$addr" --scenarios "$scenario" --runs 1 \
            --warmup 0s --duration 15s --json "$@" >"$P/$name.loadgen.json"
        callgrind_control -i off "$pid" >/dev/null
        kill -TERM "$pid"; wait "$pid" || true
        callgrind_annotate --inclusive=yes "$P/$name.out" >"$P/$name.inclusive.txt"
        callgrind_annotate --inclusive=no "$P/$name.out" >"$P/$name.self.txt"
        local events instr
        events=$(grep -o '"events": [0-9]*' "$P/$name.loadgen.json" | head -1 | grep -o '[0-9]*$')
        instr=$(grep -m1 'PROGRAM TOTALS' "$P/$name.self.txt" | tr -d ',' | awk '{print $1}')
        echo "$name: $events events, $instr instructions, $((instr / (events > 0 ? events : 1))) per event" \
            | tee -a "$P/summary.txt"
    }
    : >"$P/summary.txt"
    step "callgrind: sidecar and echo, one pipelined stream (window 16), 15 s each"
    profile_server sidecar-stream pipelined --window 16
    profile_server echo-stream pipelined --window 16
    step "callgrind: sidecar and echo, unary Evaluate, 8 in flight, 15 s each"
    profile_server sidecar-unary unary --in-flight 8
    profile_server echo-unary unary --in-flight 8
    step "top costs"
    for f in path sidecar-stream echo-stream sidecar-unary echo-unary; do
        echo "--- $f (self)"; sed -n '/^Ir/,$p' "$P/$f.self.txt" | sed -n 3,22p | cut -c1-160
    done
    cat "$P/summary.txt"
    exit 0
fi

LOADGEN_FLAGS=(--runs "$RUNS" --duration "$DURATION" --warmup "$WARMUP" --scale)
CRITERION_FLAGS=(--warm-up-time 1 --measurement-time "$CRITERION_TIME")
MEMBENCH_FLAGS=()
if [ "$MODE" = quick ]; then
    LOADGEN_FLAGS=(--quick --scale)
    CRITERION_FLAGS=(--warm-up-time 0.2 --measurement-time 0.3 --sample-size 10)
    MEMBENCH_FLAGS=(--threads 100000 --capacity 100000 --insert 200000)
fi

MACHINE="$OUT/machine.md"
{
    echo "### Machine"
    echo
    echo '```'
    lscpu | grep -E '^(Architecture|CPU\(s\)|Model name|Thread|Core|Socket|CPU max MHz|CPU MHz|L1d|L2|L3|Hypervisor)' || true
    echo "kernel: $(uname -sr)"
    echo "rustc:  $(rustc -V)"
    echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
    echo "load before the suite (uptime): $(uptime)"
    echo '```'
} >"$MACHINE"

step "microbenchmarks (criterion, ${CRITERION_FLAGS[*]})"
export CRITERION_HOME="$OUT/criterion"
rm -rf "$CRITERION_HOME"
cargo bench --locked -p threadwarden-bench --bench micro -- "${CRITERION_FLAGS[@]}" 2>&1 | tee "$OUT/criterion.log" >&2

step "load: sidecar beside echo (${LOADGEN_FLAGS[*]})"
"$OUT/threadwarden-bench" loadgen "${LOADGEN_FLAGS[@]}" --criterion "$CRITERION_HOME" \
    --server-bin "$OUT/threadwarden" --json --markdown "$OUT/loadgen.md" >"$OUT/loadgen.json"

step "memory (${MEMBENCH_FLAGS[*]:-defaults})"
"$OUT/membench" "${MEMBENCH_FLAGS[@]}" --markdown "$OUT/memory.md" --json >"$OUT/memory.json"

{
    echo "<!-- generated by scripts/bench.sh ($MODE) on $(date -u +%Y-%m-%dT%H:%MZ) -->"
    cat "$MACHINE"
    echo "load after the suite: \`$(uptime)\`"
    echo
    echo "### Commands"
    echo
    echo '```sh'
    echo "scripts/bench.sh$([ "$MODE" = quick ] && echo ' --quick')   # all of the below"
    echo "cargo bench -p threadwarden-bench --bench micro -- ${CRITERION_FLAGS[*]}"
    echo "threadwarden-bench loadgen ${LOADGEN_FLAGS[*]} --criterion target/criterion --markdown loadgen.md"
    echo "cargo run --release -p threadwarden-bench --example membench -- ${MEMBENCH_FLAGS[*]}"
    echo '```'
    echo
    cat "$OUT/loadgen.md"
    echo
    cat "$OUT/memory.md"
} >"$OUT/BENCHMARKS.generated.md"

step "done: $OUT/BENCHMARKS.generated.md"
cat "$OUT/BENCHMARKS.generated.md"

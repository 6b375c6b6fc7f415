#!/usr/bin/env bash
# What the Redis state backend costs (issue 20): the sidecar with --state-backend redis:// against
# the same binary with the memory backend, in one run, on one machine, with redis-server on
# loopback. Each of RUNS rounds flushes Redis, then runs `threadwarden-bench loadgen` once with the
# Redis sidecar as "sidecar" and the memory sidecar as the baseline ("echo" in loadgen's tables),
# interleaved, fresh processes for every scenario:
#   pipelined        1 stream, window 1024           (throughput)
#   streams          64 streams over 4 connections  (throughput)
#   latency          1 stream, open loop, 5,000/s   (p50/p99)
#   latency-streams  64 streams, open loop, 5,000/s (p50/p99)
# Every server is primed first (loadgen --prime: one event per thread id, untimed), so the runs
# measure replicas in steady state: each thread already in the sidecar's local copy and in Redis,
# one compare-and-set per event (batched with other events' under load). (A thread new to a
# replica but known to Redis costs two: the compare-and-set conflicts once. The `cold` round,
# without priming, on a Redis that already holds every thread, shows that case: every first touch
# of a thread in the run conflicts.)
# Reads Redis's used_memory per key after each round (bytes per thread in Redis), the mean batch
# (compare-and-sets per script call, from INFO commandstats, priming included), and the bare
# loopback round trip of this machine (redis-benchmark, one blocking client, GET): the floor
# under the added latency.
# Writes $OUT/redis.md (also printed) and the raw JSON per round.
#
#   scripts/bench-redis.sh            # about 6 minutes on 2 cores, after the build
#
# Knobs: OUT (target/bench-redis), RUNS (3), DURATION (5s), WARMUP (1s).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench-redis}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }

cargo build --release --locked -p threadwarden --bin threadwarden -p threadwarden-bench --bin threadwarden-bench
cp target/release/threadwarden target/release/threadwarden-bench "$OUT/"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no --daemonize yes \
    --dir "$OUT" --logfile "$OUT/redis.log" --pidfile "$OUT/redis.pid"
trap 'kill "$(cat "$OUT/redis.pid")" 2>/dev/null || true' EXIT
cli() { redis-cli -p "$PORT" "$@"; }
for _ in $(seq 1 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-server --version >"$OUT/redis-version.txt"

for run in $(seq 1 "$RUNS"); do
    cli flushall >/dev/null
    base=$(cli info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
    printf '\n==> round %s of %s\n' "$run" "$RUNS" >&2
    "$OUT/threadwarden-bench" loadgen --server-bin "$OUT/threadwarden" --runs 1 \
        --duration "$DURATION" --warmup "$WARMUP" \
        --scenarios pipelined,streams,latency,latency-streams \
        --sidecar-arg=--state-backend=redis://127.0.0.1:"$PORT" \
        --baseline-sidecar-arg=--state-backend=memory --prime --json >"$OUT/round-$run.json"
    used=$(cli info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
    keys=$(cli dbsize | tr -d '\r')
    echo "{\"base\": $base, \"used\": $used, \"keys\": $keys}" >"$OUT/round-$run.redis.json"
done

printf '\n==> cold: no priming, Redis already holding every thread\n' >&2
"$OUT/threadwarden-bench" loadgen --server-bin "$OUT/threadwarden" --runs 1 \
    --duration "$DURATION" --warmup "$WARMUP" --scenarios streams \
    --sidecar-arg=--state-backend=redis://127.0.0.1:"$PORT" \
    --baseline-sidecar-arg=--state-backend=memory --json >"$OUT/cold.json"
cli info commandstats >"$OUT/commandstats.txt"
redis-benchmark -p "$PORT" -n 20000 -c 1 -t get --csv >"$OUT/floor.csv" 2>/dev/null

python3 - "$OUT" "$RUNS" <<'EOF' | tee "$OUT/redis.md"
import csv, json, os, sys
sys.path.insert(0, "scripts")
from loadgen_report import latency, med, pair, runs_of, spread
out, runs = sys.argv[1], int(sys.argv[2])
rounds = [json.load(open(f"{out}/round-{i}.json")) for i in range(1, runs + 1)]
mem = [json.load(open(f"{out}/round-{i}.redis.json")) for i in range(1, runs + 1)]
print("| scenario | Redis events/s | memory events/s | ratio Redis/memory | Redis p50 / p99 µs | memory p50 / p99 µs | added p50 / p99 µs |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name in ["pipelined", "streams", "latency", "latency-streams"]:
    rs = list(runs_of(rounds, name))
    if not rs:
        continue
    red = [r["sidecar"]["events_per_sec"] for r in rs]
    memo = [r["echo"]["events_per_sec"] for r in rs]
    ratio = [a / b for a, b in zip(red, memo)]
    lat = lambda side, k: latency(rs, side, k)
    added = "–" if lat("sidecar", "p50_us")[0] is None else \
        f"{med([a - b for a, b in zip(lat('sidecar', 'p50_us'), lat('echo', 'p50_us'))]):.0f} / " \
        f"{med([a - b for a, b in zip(lat('sidecar', 'p99_us'), lat('echo', 'p99_us'))]):.0f}"
    print(f"| {name} | {spread(red)} | {spread(memo)} | {med(ratio):.3f} ({min(ratio):.3f}–{max(ratio):.3f}) | {pair(rs, 'sidecar')} | {pair(rs, 'echo')} | {added} |")
cold = json.load(open(f"{out}/cold.json"))["scenarios"][0]["runs"][0]
print(f"| streams, cold (no priming; Redis holds the threads) | {cold['sidecar']['events_per_sec']:,.0f} | "
      f"{cold['echo']['events_per_sec']:,.0f} | {cold['sidecar']['events_per_sec'] / cold['echo']['events_per_sec']:.3f} | – | – | – |")
cpu = lambda name, side: med([r[side]["server_cpu_us_per_event"] for r in runs_of(rounds, name)])
cls = lambda name: med([r["sidecar"]["server_classify_us"] for r in runs_of(rounds, name)])
print(f"\nSidecar CPU per event at 64 streams: Redis {cpu('streams', 'sidecar'):.1f} µs "
      f"(classification in the server {cls('streams'):.1f} µs), memory {cpu('streams', 'echo'):.1f} µs.")
stats = {}
for line in open(f"{out}/commandstats.txt"):
    if line.startswith("cmdstat_"):
        name, rest = line[len("cmdstat_"):].split(":", 1)
        stats[name] = dict(kv.split("=") for kv in rest.strip().split(","))
calls = lambda c: int(stats.get(c, {}).get("calls", 0))
if calls("evalsha"):
    script_us = float(stats["evalsha"]["usec"]) / calls("get")
    print(f"\nCompare-and-sets per script call: {calls('get') / calls('evalsha'):.1f} on average "
          f"(Redis CPU inside the script per compare-and-set: {script_us:.1f} µs)")
floor = list(csv.DictReader(open(f"{out}/floor.csv"))) if os.path.exists(f"{out}/floor.csv") else []
if floor:
    print(f"\nBare loopback round trip (redis-benchmark, 1 client, GET): p50 "
          f"{float(floor[0]['p50_latency_ms']) * 1000:.0f} µs, p99 {float(floor[0]['p99_latency_ms']) * 1000:.0f} µs")
per = [(m["used"] - m["base"]) / m["keys"] for m in mem if m["keys"]]
print(f"\nRedis memory per thread: {med(per):.0f} B (used_memory growth / keys; {', '.join(str(m['keys']) for m in mem)} keys per round)")
EOF

"""Reading `threadwarden-bench loadgen --json` rounds: shared by the bench scripts' reports
(scripts/bench-redis.sh, scripts/bench-external.sh), which import it from the repository root."""
import statistics


def runs_of(rounds, name):
    """Every run of scenario `name` over `rounds`."""
    for r in rounds:
        for sc in r["scenarios"]:
            if sc["id"] == name:
                yield from sc["runs"]


def med(xs):
    """The median of the values that were measured (nan if none was)."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def spread(xs):
    """`median (min–max)`, or `–` if nothing was measured."""
    xs = [x for x in xs if x is not None]
    return f"{med(xs):,.0f} ({min(xs):,.0f}–{max(xs):,.0f})" if xs else "–"


def latency(rs, side, key):
    """One latency figure (`p50_us`, `p99_us`) of `side` in each run (None where not measured)."""
    return [(r[side].get("latency") or {}).get(key) for r in rs]


def pair(rs, side):
    """`p50 / p99` medians of `side`, or `–` for a scenario without latencies."""
    p50, p99 = latency(rs, side, "p50_us"), latency(rs, side, "p99_us")
    return "–" if p50[0] is None else f"{med(p50):.0f} / {med(p99):.0f}"

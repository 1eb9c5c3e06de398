#!/usr/bin/env python3
"""Where one server spends more than another per round trip, symbol by symbol.

Runs one cell of the harness for each of two servers (`bench matrix --reps 1`, server pinned on
CPU 0) and, while it measures, `perf record -e cpu-clock -C 0` on the server's CPU; then prints
each symbol's time per round trip (ns) in the server's threads for both, sorted by the first's
excess over the second's. Kernel symbols as they are, user-space ones prefixed `U:`. This VM
has no hardware counters: the profile samples the clock, whose interrupts raise every figure,
and one run of each is noisy; compare the two columns, not with the harness's tables.

Usage: symbol_diff.py [--bench target/release/bench] [--conns 100] [--size 64] [--depth 1]
       [--rows 30] SERVER_A SERVER_B
SERVER is a harness server name ("proactor 1w", "raw multishot", ...).
"""
import os, re, subprocess, sys, tempfile

from harness_cell import cell_arguments, record_cpu0, with_cell

def profile(a, server, tmp):
    """Nanoseconds per round trip per symbol in the server's threads, and the round trips/s."""
    data = os.path.join(tmp, re.sub(r"\W+", "_", server) + ".data")
    _, rts = with_cell(a.bench, a.conns, a.size, a.depth, server, 8, record_cpu0(data, 6, 4000))
    rep = subprocess.run(["perf", "report", "-i", data, "--sort", "comm,sym", "--stdio", "-q"],
                         capture_output=True, text=True).stdout
    ns = {}
    for line in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(\S+)", line)
        if not m:
            continue
        pct, comm, where, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        # The server's threads (proactor-echo's and the harness's servers'), not the idle
        # loop, perf or the load generator.
        if not comm.startswith(("echo", "proactor")):
            continue
        key = sym if where == "k" else "U:" + sym
        ns[key] = ns.get(key, 0.0) + pct / 100 / rts * 1e9
    return ns, rts

def main():
    ap = cell_arguments()
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("servers", nargs=2)
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="symbol_diff.")
    (pa, ra), (pb, rb) = (profile(a, s, tmp.name) for s in a.servers)
    first, second = a.servers
    print(f"{a.conns} x {a.size} B, depth {a.depth}: {first} {ra:,.0f} rt/s, "
          f"{sum(pa.values()):.0f} ns/rt sampled; {second} {rb:,.0f} rt/s, "
          f"{sum(pb.values()):.0f} ns/rt sampled")
    print(f"| symbol | {first} ns/rt | {second} ns/rt | difference |")
    print("|---|---:|---:|---:|")
    rows = sorted(set(pa) | set(pb), key=lambda k: pb.get(k, 0.0) - pa.get(k, 0.0))
    for k in rows[:a.rows] + rows[-(a.rows // 3):]:
        x, y = pa.get(k, 0.0), pb.get(k, 0.0)
        print(f"| `{k}` | {x:.1f} | {y:.1f} | {x - y:+.1f} |")

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Server time per round trip, split at the user/kernel boundary, from a clock-sampling profile.

For each server named, runs one cell of the harness (`bench matrix --reps 1`, server pinned on
CPU 0) and, while it measures, `perf record -e cpu-clock -C 0` on the server's CPU. This VM has
no hardware counters, so the profile samples the clock: its interrupts raise every figure, so
compare servers with each other, not with the harness's tables. Also prints, per server, the
kernel symbols named with --symbols as samples per round trip (where the kernel work differs).

Usage: cpu_split.py [--bench target/release/bench] [--conns 100] [--size 64] [--depth 1]
       [--symbols tcp_sendmsg_locked,tcp_recvmsg_locked] SERVER...
SERVER is a harness server name ("proactor 1w", "raw multishot", "tokio current-thread", ...).
"""
import os, re, subprocess, sys, tempfile

from harness_cell import cell_arguments, record_cpu0, with_cell

def main():
    ap = cell_arguments()
    ap.add_argument("--symbols", default="tcp_sendmsg_locked,tcp_recvmsg_locked")
    ap.add_argument("servers", nargs="+")
    a = ap.parse_args()
    symbols = [s for s in a.symbols.split(",") if s]
    tmp = tempfile.TemporaryDirectory(prefix="cpu_split.")
    print(f"| server ({a.conns} x {a.size} B, depth {a.depth}) | round trips/s | kernel µs/rt | user µs/rt | user share |"
          + "".join(f" {s} /rt |" for s in symbols))
    print("|---|---:|---:|---:|---:|" + "---:|" * len(symbols))
    for server in a.servers:
        data = os.path.join(tmp.name, re.sub(r"\W+", "_", server) + ".data")
        _, rts = with_cell(a.bench, a.conns, a.size, a.depth, server, 6, record_cpu0(data, 5))
        us = lambda pct: pct / 100 / rts * 1e6  # a share of CPU 0's samples, per round trip
        # The server's threads: proactor-echo's (`echo-worker-N`, `proactor-echo`) and the
        # harness's servers' (`echo-*`); not the idle loop, perf or the load generator.
        rep = subprocess.run(["perf", "report", "-i", data, "--sort", "comm,dso", "--stdio", "-q"],
                             capture_output=True, text=True).stdout
        kernel = user = 0.0
        comms = set()
        for line in rep.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(.*)", line)
            if not m:
                continue
            pct, comm, dso = float(m.group(1)), m.group(2), m.group(3)
            if not (comm.startswith("echo") or comm.startswith("proactor")):
                continue
            comms.add(comm)
            if "kernel" in dso:
                kernel += pct
            else:
                user += pct
        syms = []
        for s in symbols:
            rep = subprocess.run(["perf", "report", "-i", data, "--comms", ",".join(comms),
                                  "--sort", "sym", "--stdio", "-q"], capture_output=True, text=True).stdout
            pct = sum(float(m.group(1)) for m in re.finditer(r"([\d.]+)%\s+\[k\]\s+(\S+)", rep)
                      if m.group(2) == s)
            syms.append(us(pct))
        share = user / (kernel + user) * 100 if kernel + user else 0
        print(f"| {server} | {rts:,.0f} | {us(kernel):.2f} | {us(user):.2f} | {share:.1f}% |"
              + "".join(f" {v:.3f} µs |" for v in syms))

if __name__ == "__main__":
    main()

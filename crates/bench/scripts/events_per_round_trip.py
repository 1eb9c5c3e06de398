#!/usr/bin/env python3
"""Kernel events per round trip of echo servers, counted exactly (`perf stat` on tracepoints).

For each server named, runs one cell of the harness (`bench matrix --reps 1`) and, while it
measures, counts the chosen tracepoints in the server's threads only (`perf stat -t`, the
threads named `echo*` or `proactor*`), then divides by the round trips of the harness's row.
Counts, unlike timings, do not move with this VM's noise: how many sends (`tcp_sendmsg_locked`)
and receives a server makes per round trip says how it batches.

Usage: events_per_round_trip.py [--bench target/release/bench] [--conns 100] [--size 64]
       [--depth 8] [--unpinned] [--events tcp:tcp_sendmsg_locked,sock:sock_recv_length,...] SERVER...
SERVER is a harness server name ("proactor 1w", "raw multishot", "tokio current-thread", ...).
"""
import subprocess, sys

from harness_cell import cell_arguments, server_threads, with_cell

EVENTS = ("tcp:tcp_sendmsg_locked,sock:sock_recv_length,raw_syscalls:sys_enter,"
          "io_uring:io_uring_submit_req,io_uring:io_uring_complete")
WINDOW = 5  # seconds counted, inside the harness's measuring window

def main():
    ap = cell_arguments(size=64, depth=8)
    ap.add_argument("--unpinned", action="store_true",
                    help="run the cell unpinned (the harness's --unpinned)")
    ap.add_argument("--events", default=EVENTS)
    ap.add_argument("servers", nargs="+")
    a = ap.parse_args()
    events = [e for e in a.events.split(",") if e]
    names = [e.split(":")[1] for e in events]
    print(f"| server ({a.conns} x {a.size} B, depth {a.depth}) | round trips/s | "
          + " | ".join(f"{n} /rt" for n in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for server in a.servers:
        def count():
            return subprocess.run(["perf", "stat", "-x,", "-e", ",".join(events), "-t",
                                   server_threads(server), "--", "sleep", str(WINDOW)],
                                  capture_output=True, text=True)
        stat, rts = with_cell(a.bench, a.conns, a.size, a.depth, server, WINDOW + 1, count,
                               a.unpinned)
        if stat.returncode != 0:
            sys.exit(f"perf stat failed: {stat.stderr.strip()}")
        counts = {}
        for line in stat.stderr.splitlines():
            f = line.split(",")
            if len(f) > 2 and f[0].isdigit():
                counts[f[2]] = int(f[0])
        print(f"| {server} | {rts:,.0f} | "
              + " | ".join(f"{counts.get(e, 0) / WINDOW / rts:.3f}" for e in events) + " |")

if __name__ == "__main__":
    main()

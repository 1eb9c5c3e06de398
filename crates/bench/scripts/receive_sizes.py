#!/usr/bin/env python3
"""How many bytes each receive of an echo server takes (`perf record` on `sock:sock_recv_length`).

For each server named, runs one cell of the harness (`bench matrix --reps 1`) and, while it
measures, records every `sock_recvmsg` of the server's threads (the threads named `echo*` or
`proactor*`) for one second: its length or error. Prints, per server, the receives per round
trip (every call, `EAGAIN` included) and the share of them that took one message, a whole
multiple of messages, any other length, nothing (the end of the stream, or a peek: the
tracepoint shows a peek's length as 0), `EAGAIN`, another error; and the mean bytes of the
receives that took some. At depth 8 a server whose receives run when a burst's first segment
lands takes one message; one that runs after the burst took its whole window.

Usage: receive_sizes.py [--bench target/release/bench] [--conns 100] [--size 4096]
       [--depth 8] SERVER...
SERVER is a harness server name ("proactor 1w", "raw multishot", "monoio", ...).
"""
import collections, re, subprocess, sys, tempfile

from harness_cell import cell_arguments, server_threads, with_cell

WINDOW = 1  # seconds recorded, inside the harness's measuring window
# perf prints the tracepoint's fields as recorded: an error may show as a negative length.
RECORD = re.compile(r"length = (-?\d+), error = (-?\d+)")

def classify(length, error, size):
    if error:
        return "EAGAIN" if error == -11 else "other error"
    if length == 0:
        return "nothing"
    if length == size:
        return "one message"
    if length % size == 0:
        return "several messages"
    return "other length"

def main():
    ap = cell_arguments(size=4096, depth=8)
    ap.add_argument("servers", nargs="+")
    a = ap.parse_args()
    kinds = ["one message", "several messages", "other length", "nothing", "EAGAIN",
             "other error"]
    print(f"| server ({a.conns} x {a.size} B, depth {a.depth}) | round trips/s | receives/rt | "
          + " | ".join(kinds) + " | mean bytes taken |")
    print("|---|---:|---:|" + "---:|" * (len(kinds) + 1))
    for server in a.servers:
        with tempfile.NamedTemporaryFile(suffix=".data") as out:
            def record():
                return subprocess.run(["perf", "record", "-q", "-e", "sock:sock_recv_length", "-t",
                                       server_threads(server), "-o", out.name, "--", "sleep",
                                       str(WINDOW)], capture_output=True, text=True)
            rec, rts = with_cell(a.bench, a.conns, a.size, a.depth, server, WINDOW + 3, record)
            if rec.returncode != 0:
                sys.exit(f"perf record failed: {rec.stderr.strip()}")
            script = subprocess.run(["perf", "script", "-i", out.name], capture_output=True,
                                    text=True).stdout
        counts, total, n = collections.Counter(), 0, 0
        for m in RECORD.finditer(script):
            length, error = int(m.group(1)), int(m.group(2))
            if length < 0:
                length, error = 0, length
            counts[classify(length, error, a.size)] += 1
            total += length
            n += 1
        if n == 0:
            sys.exit(f"no receive recorded for {server!r}")
        took = n - counts["EAGAIN"] - counts["other error"] - counts["nothing"]
        print(f"| {server} | {rts:,.0f} | {n / WINDOW / rts:.3f} | "
              + " | ".join(f"{100 * counts[k] / n:.1f}%" for k in kinds)
              + f" | {total / max(took, 1):,.0f} |")

if __name__ == "__main__":
    main()

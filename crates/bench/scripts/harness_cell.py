"""One cell of the harness run for a profile script: `with_cell(...)` starts `bench matrix
--reps 1` on one server, calls `during()` once the server's connections are up and its warm-up
is under way, and returns what `during()` returned with the round trips per second of the
server's row."""
import subprocess, sys, time

def with_cell(bench, conns, size, depth, server, secs, during):
    proc = subprocess.Popen(
        [bench, "matrix", "--conns", str(conns), "--sizes", str(size), "--depths", str(depth),
         "--reps", "1", "--secs", str(secs), "--only", server],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(3)  # the server started, its connections up, the warm-up under way
    try:
        got = during()
    except BaseException:
        proc.kill()
        raise
    out, _ = proc.communicate()
    row = next((l for l in out.splitlines() if l.startswith(f"| {server} |")), None)
    if row is None:
        sys.exit(f"no result row for {server!r} (is it a harness server name?)")
    return got, float(row.split("|")[4])

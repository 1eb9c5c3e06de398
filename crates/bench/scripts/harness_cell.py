"""One cell of the harness run for a profile script: `with_cell(...)` starts `bench matrix
--reps 1` on one server, calls `during()` once the server's connections are up and its warm-up
is under way, and returns what `during()` returned with the round trips per second of the
server's row (the server pinned on CPU 0 and the generator on CPU 1 unless `unpinned`);
`server_threads()` names the server's threads for `perf -t`; `record_cpu0()` samples CPU 0's
clock into a perf data file; `cell_arguments()` parses a cell's options."""
import argparse, subprocess, sys, time

def with_cell(bench, conns, size, depth, server, secs, during, unpinned=False):
    proc = subprocess.Popen(
        [bench, "matrix", "--conns", str(conns), "--sizes", str(size), "--depths", str(depth),
         "--reps", "1", "--secs", str(secs), "--only", server]
        + (["--unpinned"] if unpinned else []),
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


def server_threads(server):
    """The thread ids of the running server (its threads are named `echo*` or `proactor*`), as
    `perf -t` takes them: comma-separated. Exits if there is none."""
    ps = subprocess.run(["ps", "-eLo", "tid,comm"], capture_output=True, text=True).stdout
    tids = [f[0] for f in (l.split() for l in ps.splitlines()[1:])
            if len(f) > 1 and f[1].startswith(("echo", "proactor"))]
    if not tids:
        sys.exit(f"no server thread found for {server!r}")
    return ",".join(tids)


def record_cpu0(data, seconds, frequency=2000):
    """A `during()` for `with_cell`: `perf record -e cpu-clock -C 0` (the pinned server's CPU) for
    `seconds` into `data`; exits if perf fails."""
    def during():
        rec = subprocess.run(
            ["perf", "record", "-q", "-F", str(frequency), "-e", "cpu-clock", "-C", "0",
             "-o", data, "--", "sleep", str(seconds)], capture_output=True, text=True)
        if rec.returncode != 0:
            sys.exit(f"perf record failed: {rec.stderr.strip()}")
    return during


def cell_arguments(size=64, depth=1):
    """An argument parser with a cell's options: --bench, --conns (100), --size, --depth."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="target/release/bench")
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--size", type=int, default=size)
    ap.add_argument("--depth", type=int, default=depth)
    return ap
